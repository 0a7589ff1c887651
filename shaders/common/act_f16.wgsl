// Activation fragment: f16 activations, where the adapter has shader-f16. Halves the bytes of the
// activations a kernel reads or writes; kernels still compute and accumulate in f32 (an f16 sum
// over thousands of products would lose the result), converting on load and store.
enable f16;
alias Act = f16;
