// Holdfast console: the few things a server-rendered page cannot do alone. Every change
// goes to the REST API (same checks as any API client) with the session's CSRF token;
// live state arrives as server-sent events. No framework, no build step.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf"]') || {}).content || "";

  // `raw`: send `body` as it is, with that content type (an uploaded file).
  async function api(method, path, body, raw) {
    const opts = { method, headers: { "x-csrf-token": csrf() }, credentials: "same-origin" };
    if (raw) {
      opts.headers["content-type"] = raw;
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!r.ok) {
      const e = data && data.error;
      let msg = e ? e.message : (r.status + " " + r.statusText);
      if (e && e.details) msg += ": " + e.details.map((d) => (d.field ? d.field + ": " : "") + d.message).join("; ");
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  // Read a form into JSON: `name="a.b"` nests, data-type says how to read the value
  // (number, bool, list = comma/space separated, json); empty optional fields are left out.
  function read(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.closest("[hidden]")) continue;
      const type = el.dataset.type || "";
      let v;
      if (el.type === "checkbox") {
        if (type === "set") { if (!el.checked) continue; v = el.value; }
        else v = el.checked;
      } else if (el.type === "radio") {
        if (!el.checked) continue;
        v = el.value;
      } else {
        v = el.value.trim();
        if (v === "" && !el.dataset.keepEmpty) continue;
        if (type === "number") v = Number(v);
        else if (type === "list") v = v.split(/[\s,;]+/).filter(Boolean);
        else if (type === "numbers") v = v.split(/[\s,;]+/).filter(Boolean).map(Number);
        else if (type === "json") v = JSON.parse(v);
      }
      const keys = el.name.split(".");
      let o = out;
      keys.slice(0, -1).forEach((k) => { o = o[k] = o[k] || {}; });
      const last = keys[keys.length - 1];
      if (type === "set") (o[last] = o[last] || []).push(v);
      else o[last] = v;
    }
    return out;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function show(el, text, ok) {
    if (!el) return;
    el.textContent = text;
    el.className = "msg " + (ok ? "ok" : "error");
  }

  function then(spec, data) {
    if (!spec || spec === "reload") return location.reload();
    if (spec === "stay") return;
    location.href = spec.replace("{id}", data && data.id !== undefined ? data.id : "");
  }

  // <form data-api="/api/v1/x" data-method="POST" data-then="/x/{id}">
  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("form[data-api]");
    if (!form) return;
    ev.preventDefault();
    const out = form.querySelector(".msg");
    const button = form.querySelector("button[type=submit], button:not([type])");
    if (button) button.disabled = true;
    try {
      let data;
      if (form.dataset.upload !== undefined) {
        // A file (or pasted text) sent as it is: XML when it starts with "<", else JSON.
        const input = form.querySelector("input[type=file]");
        const text = input && input.files.length ? await input.files[0].text() : form.querySelector("textarea").value;
        if (!text.trim()) throw new Error("choose a file or paste one");
        const type = text.trim().startsWith("<") ? "application/xml" : "application/json";
        data = await api(form.dataset.method || "POST", form.dataset.api, text, type);
      } else {
        let body = read(form);
        if (form.dataset.build) body = window.hf.build[form.dataset.build](body, form);
        data = await api(form.dataset.method || "POST", form.dataset.api, body);
      }
      if (form.dataset.done) show(out, form.dataset.done, true);
      if (form.dataset.result && window.hf.result[form.dataset.result]) window.hf.result[form.dataset.result](data, form);
      else then(form.dataset.then, data);
    } catch (e) {
      show(out, e.message, false);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // <button data-call="POST /api/v1/jobs/3/run" data-confirm="…" data-then="reload">
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-call]");
    if (b) {
      ev.preventDefault();
      if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
      const [method, path] = b.dataset.call.split(" ");
      const out = document.getElementById(b.dataset.out || "") || b.parentElement.querySelector(".msg");
      b.disabled = true;
      try {
        const body = b.dataset.body ? JSON.parse(b.dataset.body) : undefined;
        const data = await api(method, path, body);
        if (b.dataset.result && window.hf.result[b.dataset.result]) window.hf.result[b.dataset.result](data, b);
        else then(b.dataset.then, data);
      } catch (e) {
        show(out, e.message, false);
      } finally {
        b.disabled = false;
      }
      return;
    }
    const t = ev.target.closest("[data-toggle-job]");
    if (t) {
      const path = "/api/v1/jobs/" + t.dataset.toggleJob;
      try {
        const j = await api("GET", path);
        await api("PUT", path, { name: j.name, enabled: !j.enabled, spec: j.spec });
        location.reload();
      } catch (e) {
        show(t.parentElement.querySelector(".msg"), e.message, false);
      }
      return;
    }
    const c = ev.target.closest("[data-copy]");
    if (c) {
      const text = document.getElementById(c.dataset.copy).textContent;
      const done = () => { c.textContent = "Copied"; setTimeout(() => (c.textContent = "Copy"), 1500); };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
      else {
        const r = document.createRange();
        r.selectNodeContents(document.getElementById(c.dataset.copy));
        const s = getSelection(); s.removeAllRanges(); s.addRange(r);
        document.execCommand("copy"); done();
      }
    }
  });

  // Live state: runs' progress and agents' status, pushed by the server.
  function live() {
    if (!document.querySelector("[data-live]")) return;
    const es = new EventSource("/console/events");
    es.addEventListener("state", (ev) => {
      const s = JSON.parse(ev.data);
      const running = new Set();
      for (const r of s.runs) {
        running.add(String(r.id));
        document.querySelectorAll('[data-run="' + r.id + '"]').forEach((el) => {
          el.dataset.seen = "1";
          const bar = el.querySelector(".progress > i");
          if (bar) bar.style.width = r.percent + "%";
          const t = el.querySelector("[data-text]");
          if (t) t.textContent = r.text;
          el.dataset.percent = r.percent;
        });
      }
      // A run that left the list has ended: its final state is on the report.
      document.querySelectorAll("[data-run]").forEach((el) => {
        const open = el.dataset.state === "running" || el.dataset.state === "queued" || el.dataset.seen;
        if (!running.has(el.dataset.run) && open && el.dataset.state !== "done" && !el.dataset.ended) {
          el.dataset.ended = "1";
          const bar = el.querySelector(".progress > i");
          if (bar) bar.style.width = "100%";
          el.dataset.percent = "100";
          const t = el.querySelector("[data-text]");
          if (t) t.textContent = "finished";
          if (el.dataset.reload) setTimeout(() => location.reload(), 800);
        }
      });
      document.querySelectorAll("[data-agent]").forEach((el) => {
        const st = s.agents[el.dataset.agent];
        if (st && el.textContent !== st) { el.textContent = st; el.className = "badge s-" + st; }
      });
      if (s.reload_on && document.querySelector('[data-reload-on="' + s.reload_on + '"]')) location.reload();
    });
  }

  const result = {
    // A new enrolment token: show the command to run on the machine.
    enrolment(data) {
      document.getElementById("enrol-command").textContent = data.command;
      document.getElementById("enrol-result").hidden = false;
    },
    // "Test connection" / "check job" answers: say what the agent found.
    probe(data, el) {
      const out = document.getElementById(el.dataset.out || "") || el.parentElement.querySelector(".msg");
      // An SFTP server whose key nobody confirmed: the agent only read the key; show it to
      // compare, with the button that trusts it.
      if (data.host_key && !data.host_key.confirmed) {
        const box = document.getElementById("host-key-offer");
        if (box) {
          box.querySelector("code").textContent = data.host_key.fingerprint;
          const trust = document.getElementById("trust-key");
          if (trust) trust.dataset.body = JSON.stringify({ fingerprint: data.host_key.fingerprint });
          box.hidden = false;
        }
        show(out, "Not tested yet: the server's host key must be confirmed first (below).", false);
        return;
      }
      const ok = data.ok !== false;
      let text = data.detail || data.message || (ok ? "OK" : "failed");
      if (data.write_ms !== undefined) {
        text = "wrote, read back and deleted a " + bytes(data.bytes) + " test file (write " + data.write_ms +
          " ms, read " + data.read_ms + " ms); free space " + (data.free_bytes == null ? "unknown" : bytes(data.free_bytes));
        if (data.object_lock) {
          text += data.object_lock.enabled
            ? "; Object Lock enabled: jobs can lock their images here"
            : "; Object Lock NOT enabled on this bucket: images can be deleted by anyone with its keys";
        }
      }
      if (data.problems && data.problems.length) text = data.problems.join("; ");
      show(out, (ok ? "OK: " : "Failed: ") + text, ok);
    },
    // A test e-mail was handed to the SMTP server.
    sent(data, el) {
      show(el.querySelector(".msg"), "Sent: the SMTP server accepted the test e-mail.", true);
    },
  };

  result.token = (data) => {
    const pre = document.getElementById("token-secret");
    pre.textContent = "Your new token (shown once): " + data.secret;
    pre.hidden = false;
  };
  // A restore started: its report.
  result.restored = (data) => {
    location.href = "/reports/" + data.run.id;
  };

  result.checked = (data, el) => {
    const lines = (data.agents || []).map((a) => {
      const r = a.result || {};
      const bad = (r.checks || []).filter((c) => c.status !== "ok");
      return "agent " + a.agent_id + ": " + (r.ok ? "ready" : bad.map((c) => c.check + ": " + c.detail).join("; "));
    });
    const ok = (data.agents || []).every((a) => a.result && a.result.ok);
    show(document.getElementById(el.dataset.out), lines.join(" · ") || "no agents", ok);
  };

  const build = {
    // The wizard's fields as the API's job: drop what is not chosen, convert units.
    job(body) {
      const spec = body.spec || {};
      if (body.run_on === "site") delete spec.agents;
      else {
        delete spec.site_id;
        spec.agents = (spec.agents || []).map(Number);
      }
      if (spec.schedule && (spec.schedule.kind === "none" || !spec.schedule.kind)) delete spec.schedule;
      if (spec.verify_schedule && (spec.verify_schedule.kind === "none" || !spec.verify_schedule.kind)) delete spec.verify_schedule;
      for (const hook of ["before", "after"]) {
        if (spec[hook] && !spec[hook].command) delete spec[hook];
      }
      if (spec.retention && Object.keys(spec.retention).length === 0) delete spec.retention;
      if (spec.immutability && !spec.immutability.mode) delete spec.immutability;
      if (spec.notify && !spec.notify.when) delete spec.notify;
      if (spec.notify && !spec.notify.recipients) spec.notify.recipients = [];
      if (body.split_mib) spec.split_size = body.split_mib * 1048576;
      const out = { name: body.name || "", enabled: !!body.enabled, spec };
      if (body.password) out.password = body.password;
      if (body.luks_passphrase) out.luks_passphrase = body.luks_passphrase;
      if (body.clear_luks_passphrase) out.clear_luks_passphrase = true;
      return out;
    },
    alerts(body) {
      const out = {};
      if (body.stale && body.stale.hours) out.stale = { hours: body.stale.hours, recipients: body.stale.recipients || [] };
      if (body.digest && body.digest.time) out.digest = Object.assign({ recipients: [] }, body.digest);
      return out;
    },
    site(body) {
      const d = body.defaults || {};
      if (d.schedule && (d.schedule.kind === "none" || !d.schedule.kind)) delete d.schedule;
      if (d.notify && !d.notify.when) delete d.notify;
      if (d.notify && !d.notify.recipients) d.notify.recipients = [];
      return { name: body.name || "", defaults: d };
    },
  };

  // Show the parts of a form that belong to the chosen option: data-switch="x" on a
  // select or radio, data-x="value other" on the parts.
  function switches(root) {
    root.querySelectorAll("[data-switch]").forEach((sw) => {
      const key = sw.dataset.switch;
      const form = sw.form || root;
      const chosen = () => {
        const els = form.querySelectorAll('[data-switch="' + key + '"]');
        for (const e of els) if (e.type !== "radio" || e.checked) return e.value;
        return "";
      };
      const apply = () => {
        const v = chosen();
        form.querySelectorAll("[data-" + key + "]").forEach((part) => {
          part.hidden = !part.getAttribute("data-" + key).split(" ").includes(v);
        });
      };
      sw.addEventListener("change", apply);
      apply();
    });
  }

  // Put `obj` (nested like the field names) into the form's fields.
  function fill(form, obj) {
    const get = (path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
    for (const el of form.elements) {
      if (!el.name) continue;
      const v = get(el.name);
      if (v === undefined || v === null) continue;
      if (el.type === "checkbox") el.checked = el.dataset.type === "set" ? v.map(String).includes(el.value) : !!v;
      else if (el.type === "radio") el.checked = String(v) === el.value;
      else if (Array.isArray(v)) el.value = v.join(", ");
      else el.value = String(v);
    }
  }

  function wizard(form) {
    const current = JSON.parse(form.dataset.current || "{}");
    const spec = current.spec || {};
    current.run_on = spec.site_id ? "site" : "agents";
    // Several sources are edited together, the first one included.
    if (spec.all_disks) current.what = "machine";
    else if (spec.sources && spec.sources.length) {
      current.what = "several";
      spec.sources = [spec.source, ...spec.sources].filter(Boolean);
      spec.source = "";
    } else current.what = "one";
    if (spec.split_size) current.split_mib = Math.round(spec.split_size / 1048576);
    fill(form, current);
    switches(form);
    const name = document.getElementById("preview-name");
    const runs = document.getElementById("preview-runs");
    const error = document.getElementById("preview-error");
    let timer = null;
    const preview = async () => {
      try {
        const body = build.job(read(form));
        const p = await api("POST", "/api/v1/jobs/preview", { spec: body.spec });
        const of = [];
        if (p.sources > 1) of.push("first of " + p.sources + " sources");
        if (p.agents > 1) of.push("first of " + p.agents + " agents");
        name.textContent = "Image: " + p.name + (of.length ? "  (" + of.join(", ") + ")" : "");
        runs.replaceChildren(...p.next_runs.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
        if (!p.next_runs.length) { const li = document.createElement("li"); li.textContent = "no scheduled runs: run by hand"; runs.replaceChildren(li); }
        error.textContent = "";
      } catch (e) {
        error.textContent = e.message;
      }
    };
    const later = () => { clearTimeout(timer); timer = setTimeout(preview, 300); };
    form.addEventListener("input", later);
    form.addEventListener("change", later);
    preview();
  }


  // An image point's files: folders listed on demand by an agent, downloads for operators,
  // and the paths ticked for a restore.
  function browser(root) {
    const id = root.dataset.image;
    const operator = root.dataset.operator === "1";
    const body = root.querySelector("tbody");
    const crumbs = root.querySelector("[data-crumbs]");
    const out = root.querySelector(".msg");
    const reader = document.getElementById("reader-agent");
    const part = document.getElementById("partition");
    const chosen = new Set();
    const query = (extra) => {
      const q = new URLSearchParams(extra);
      if (reader && reader.value) q.set("agent", reader.value);
      if (part && part.value) q.set("partition", part.value);
      return q.toString();
    };
    const url = (what, extra) => "/api/v1/images/" + id + "/" + what + "?" + query(extra);
    const join = (dir, name) => (dir === "/" ? "" : dir) + "/" + name;
    const el = (tag, text, cls) => {
      const e = document.createElement(tag);
      if (text) e.textContent = text;
      if (cls) e.className = cls;
      return e;
    };
    const downloads = (cell, path, formats) => {
      for (const f of formats) {
        const a = el("a", f === "file" ? "Download" : "." + f, "btn alt small");
        a.href = url("download", { path, format: f });
        a.dataset.download = path;
        cell.append(a, " ");
      }
    };
    async function open(path) {
      show(out, "Reading " + path + " …", true);
      try {
        const list = await api("GET", url("files", { path }));
        root.dataset.path = path;
        crumbs.textContent = "";
        const crumb = (label, p) => { const a = el("a", label); a.href = "#"; a.dataset.dir = p; crumbs.append(a); };
        crumb("/", "/");
        let at = "";
        path.split("/").filter(Boolean).forEach((p, i) => { at += "/" + p; if (i) crumbs.append(" / "); crumb(p, at); });
        body.textContent = "";
        for (const e of list.entries) {
          const tr = el("tr");
          const full = join(path, e.name);
          const cell = (child, cls) => { const td = el("td", "", cls); if (child !== undefined) td.append(child); tr.append(td); return td; };
          if (operator) {
            const c = el("input");
            c.type = "checkbox";
            c.dataset.pick = full;
            c.checked = chosen.has(full);
            c.setAttribute("aria-label", "select " + e.name);
            cell(c);
          }
          if (e.kind === "dir") {
            const a = el("a", e.name + "/");
            a.href = "#";
            a.dataset.dir = full;
            cell(a, "mono");
          } else cell(e.name + (e.target ? " → " + e.target : ""), "mono");
          cell(e.kind);
          cell(e.kind === "file" ? bytes(e.size) : "", "num");
          cell(e.mode, "mono");
          cell(e.uid + ":" + e.gid);
          cell(e.modified.replace("T", " ").replace("Z", " UTC"), "small");
          const act = cell();
          if (operator && e.kind === "file") downloads(act, full, ["file"]);
          if (operator && e.kind === "dir") {
            const b = el("button", "Download…", "alt small");
            b.type = "button";
            b.dataset.measure = full;
            act.append(b);
          }
          body.append(tr);
        }
        if (!list.entries.length) body.append(el("tr", "Empty folder.", "empty"));
        out.textContent = "";
        out.className = "msg";
      } catch (e) {
        show(out, e.message, false);
      }
    }
    root.addEventListener("click", async (ev) => {
      const d = ev.target.closest("[data-dir]");
      if (d) {
        ev.preventDefault();
        open(d.dataset.dir);
        return;
      }
      const m = ev.target.closest("[data-measure]");
      if (!m) return;
      // The size first: a folder's download is counted before it starts.
      m.disabled = true;
      m.textContent = "Counting…";
      try {
        const t = (await api("GET", url("files", { path: m.dataset.measure, total: "true" }))).total;
        const box = m.parentElement;
        box.textContent = t.files + " file(s), " + bytes(t.bytes) + ": ";
        downloads(box, m.dataset.measure, ["tar.gz", "zip"]);
      } catch (e) {
        show(out, e.message, false);
        m.disabled = false;
        m.textContent = "Download…";
      }
    });
    root.addEventListener("change", (ev) => {
      const c = ev.target.closest("[data-pick]");
      if (!c) return;
      if (c.checked) chosen.add(c.dataset.pick);
      else chosen.delete(c.dataset.pick);
      const p = document.getElementById("picked");
      if (p) p.textContent = chosen.size ? [...chosen].join(", ") : "nothing yet: tick files or folders above";
    });
    [reader, part].forEach((x) => x && x.addEventListener("change", () => open(root.dataset.path || "/")));
    build.restoreFiles = (b) => {
      b.paths = [...chosen];
      if (!b.paths.length) throw new Error("tick the files or folders to restore first");
      if (b.dest === "original") delete b.to;
      else if (!b.to) throw new Error("name the folder to restore into");
      delete b.dest;
      if (part && part.value) b.partition = Number(part.value);
      return b;
    };
    open("/");
  }

  // Device lists of a restore or clone form (select[data-device-list]): the agent's disks
  // and partitions, with their size and what is on them. A device written to ("target")
  // cannot be chosen while it is mounted; a source can (it is held consistent meanwhile).
  function devices(form) {
    const agent = form.querySelector("[name=agent_id]");
    const lists = form.querySelectorAll("select[data-device-list]");
    async function load() {
      lists.forEach((l) => { l.textContent = ""; });
      try {
        const id = agent ? agent.value : form.dataset.agentId;
        const inv = (await api("GET", "/api/v1/agents/" + id)).inventory || { disks: [], volumes: [] };
        const what = (v) => (v ? ", " + (v.filesystem || "no filesystem") + (v.label ? " '" + v.label + "'" : "") : "");
        const add = (name, text, mounted) => {
          for (const list of lists) {
            const o = document.createElement("option");
            o.value = "/dev/" + name;
            o.textContent = "/dev/" + name + ": " + text + (mounted ? ", mounted (" + mounted + ")" : "");
            o.disabled = !!mounted && list.dataset.deviceList === "target";
            list.append(o);
          }
        };
        for (const d of inv.disks) {
          const whole = inv.volumes.find((v) => v.name === d.name && !v.disk);
          const parts = inv.volumes.filter((v) => v.disk === d.name);
          const busy = parts.find((p) => p.mount_point);
          add(
            d.name,
            "disk, " + bytes(d.size) + (d.model ? ", " + d.model : "") + (parts.length ? ", " + parts.length + " partition(s)" : "") + what(whole),
            (whole && whole.mount_point) || (busy && "/dev/" + busy.name + " at " + busy.mount_point),
          );
          for (const p of parts) add(p.name, bytes(p.size) + what(p), p.mount_point);
        }
      } catch (e) {
        show(form.querySelector(".msg"), e.message, false);
      }
    }
    if (agent) agent.addEventListener("change", load);
    load();
  }

  // Agents installed over SSH (agents page): read the machines' host keys, let the admin
  // confirm each, install on the confirmed ones and follow their steps.
  function installer(card) {
    const form = card.querySelector("#install-form");
    const msg = form.querySelector(".msg");
    const rows = card.querySelector("#install-key-rows");
    const progress = card.querySelector("#install-progress");
    const server = card.querySelector("#install-server");
    if (!server.value) server.value = location.origin;
    const machines = () => form.elements.machines.value.split(/\s+/).filter(Boolean).map((m) => {
      const at = m.lastIndexOf(":");
      return at > 0 && /^\d+$/.test(m.slice(at + 1)) && m.indexOf(":") === at
        ? { host: m.slice(0, at), port: Number(m.slice(at + 1)) } : { host: m };
    });
    card.querySelector("#install-keys").addEventListener("click", async () => {
      rows.textContent = "";
      try {
        const r = await api("POST", "/api/v1/installs/host-keys", { machines: machines() });
        for (const k of r.keys) {
          const tr = document.createElement("tr");
          const name = document.createElement("td");
          name.textContent = k.host + ":" + k.port;
          const key = document.createElement("td");
          key.textContent = k.fingerprint || k.error;
          key.className = k.fingerprint ? "mono" : "error";
          const ok = document.createElement("td");
          if (k.fingerprint) {
            const box = document.createElement("input");
            box.type = "checkbox";
            box.dataset.host = k.host;
            box.dataset.port = k.port;
            box.dataset.fingerprint = k.fingerprint;
            ok.append(box);
          }
          tr.append(name, key, ok);
          rows.append(tr);
        }
        card.querySelector("#install-confirm").hidden = false;
        show(msg, "", true);
      } catch (e) {
        show(msg, e.message, false);
      }
    });
    card.querySelector("#install-start").addEventListener("click", async () => {
      const chosen = [...rows.querySelectorAll("input:checked")].map((b) => ({
        host: b.dataset.host, port: Number(b.dataset.port), fingerprint: b.dataset.fingerprint,
      }));
      if (!chosen.length) return show(msg, "confirm at least one machine's host key", false);
      const f = form.elements;
      const body = { machines: chosen, user: f.user.value.trim(), server_url: f.server_url.value.trim() };
      if (f.private_key.value.trim()) {
        body.private_key = f.private_key.value;
        if (f.passphrase.value) body.passphrase = f.passphrase.value;
      } else body.password = f.password.value;
      try {
        const r = await api("POST", "/api/v1/installs", body);
        f.password.value = f.private_key.value = f.passphrase.value = "";
        for (const i of r.installs) follow(i.id);
      } catch (e) {
        show(msg, e.message, false);
      }
    });
    function follow(id) {
      const box = document.createElement("div");
      box.className = "card";
      box.dataset.install = id;
      progress.prepend(box);
      const draw = (i) => {
        box.textContent = "";
        const h = document.createElement("h3");
        h.textContent = i.user_name + "@" + i.host + ":" + i.port + " ";
        const badge = document.createElement("span");
        badge.className = "badge s-" + i.state;
        badge.textContent = i.state;
        h.append(badge);
        const list = document.createElement("ol");
        for (const s of i.steps) {
          const li = document.createElement("li");
          li.className = s.status;
          li.textContent = s.title + ": " + s.detail;
          list.append(li);
        }
        box.append(h, list);
        if (i.state === "successful" || i.state === "warning") {
          const a = document.createElement("a");
          a.href = "/agents/" + i.agent_id;
          a.textContent = "the agent's page";
          box.append(a);
        }
      };
      const tick = async () => {
        try {
          const i = await api("GET", "/api/v1/installs/" + id);
          draw(i);
          if (i.state === "running") setTimeout(tick, 1000);
        } catch (e) {
          box.textContent = e.message;
        }
      };
      tick();
    }
  }

  function init() {
    document.querySelectorAll("#install").forEach(installer);
    document.querySelectorAll("form[data-wizard]").forEach(wizard);
    document.querySelectorAll("form[data-current]:not([data-wizard])").forEach((f) => {
      fill(f, JSON.parse(f.dataset.current || "{}"));
      switches(f);
    });
    document.querySelectorAll("[data-browser]").forEach(browser);
    document.querySelectorAll("form[data-devices]").forEach(devices);
    live();
  }

  window.hf = { api, read, show, build, result };
  document.addEventListener("DOMContentLoaded", init);
})();
