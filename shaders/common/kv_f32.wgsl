// KV-cache fragment: f32 K and V (every adapter).
alias Kv = f32;
