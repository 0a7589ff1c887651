// Activation fragment: f32 activations (every adapter).
alias Act = f32;
