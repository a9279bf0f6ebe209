//! A job file as `POST /api/v1/jobs/import` takes it: XML (with the parser's depth, element
//! and attribute limits) or JSON, then the job definition it must hold, checked.
#![no_main]

use holdfast_server::jobs::job_xml::from_xml;
use holdfast_server::jobs::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = if data.first() == Some(&b'<') {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match from_xml("job", text) {
            Ok(v) => v,
            Err(_) => return,
        }
    } else {
        match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    if let Ok(spec) = serde_json::from_value::<JobSpec>(value["spec"].clone()) {
        let _ = spec.validate();
    }
});
