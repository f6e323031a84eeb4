// Package weights reads and writes model weights: the project's own checkpoint format
// (safetensors), PyTorch archives written by torch.save, and the mapping of the released
// BlackMamba checkpoints onto the variable names of package bm.
//
// # Checkpoints
//
// A checkpoint is one safetensors file: an 8-byte little-endian header length, a JSON header
// naming every tensor with its dtype, shape and byte range, then the raw little-endian data.
// Tensor names are GoMLX variable paths, scope and name joined by "/" (for example
// "/decoder/layers/0/mixer/in_proj"); the header's "__metadata__" holds string pairs such as the
// model configuration as JSON (key "config"). Save writes atomically and in sorted name order, so
// the same tensors always give the same bytes. Open reads the header only and returns a File that
// reads one tensor at a time, so loading a model needs no more memory than the model itself.
//
// FromContext and IntoContext move tensors between a checkpoint and a context.Context.
//
// # PyTorch import
//
// ReadTorch opens a torch.save zip archive (the default format since PyTorch 1.6) with a pickle
// reader of its own that accepts only the few globals a state dict needs, and reads each storage
// from the archive when its tensor is converted. ImportBlackMamba maps a released BlackMamba state
// dict onto bm's variables:
//
//	embedding.word_embeddings.weight                  [V, d]    → /embedding/word_embeddings/weight [V, d]
//	decoder.layers.{i}.norm.weight                    [d]       → /decoder/layers/{i}/norm/weight
//	decoder.layers.{i}.mixer.in_proj.weight           [2D, d]   → /decoder/layers/{i}/mixer/in_proj [d, 2D]
//	decoder.layers.{i}.mixer.conv1d.weight            [D, 1, K] → .../mixer/conv1d_weight [K, D]
//	decoder.layers.{i}.mixer.conv1d.bias              [D]       → .../mixer/conv1d_bias [D]
//	decoder.layers.{i}.mixer.x_proj.weight            [R+2N, D] → .../mixer/x_proj [D, R+2N]
//	decoder.layers.{i}.mixer.dt_proj.weight           [D, R]    → .../mixer/dt_proj [R, D]
//	decoder.layers.{i}.mixer.dt_proj.bias             [D]       → .../mixer/dt_proj_bias [D]
//	decoder.layers.{i}.mixer.A_log                    [D, N]    → .../mixer/A_log [D, N]
//	decoder.layers.{i}.mixer.D                        [D]       → .../mixer/D [D]
//	decoder.layers.{i}.mixer.out_proj.weight          [d, D]    → .../mixer/out_proj [D, d]
//	decoder.layers.{i}.mixer.router.weight            [E, d]    → .../mixer/router_weight [d, E]
//	decoder.layers.{i}.mixer.router.bias              [E]       → .../mixer/router_bias [E]
//	decoder.layers.{i}.mixer.local_experts.{e}.linear_fc1.weight [2F, d] → .../mixer/fc1 [E, d, 2F]
//	decoder.layers.{i}.mixer.local_experts.{e}.linear_fc2.weight [d, F]  → .../mixer/fc2 [E, F, d]
//	decoder.final_layernorm.weight, .bias             [d]       → /decoder/final_layernorm/weight, bias
//
// PyTorch stores linear weights as [out, in] and GoMLX as [in, out], hence the transposes; the
// experts of one layer are stacked on a leading axis. The LM head is tied to the embedding.
package weights
