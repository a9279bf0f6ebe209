//! Messages on the agents' channel, both ways: what a server sends an agent and what an
//! agent (or anyone who enrolled one) sends the server, and the binary data frame header.
#![no_main]

use holdfast_proto::{AgentMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<AgentMsg>(data) {
        let _ = serde_json::to_vec(&m);
    }
    if let Ok(m) = serde_json::from_slice::<ServerMsg>(data) {
        let _ = serde_json::to_vec(&m);
    }
    let _ = holdfast_proto::parse_data_frame(data);
});
