// Package bm is the BlackMamba model: Mamba mixers alternating with mixture-of-experts MLPs,
// and the baselines (dense Mamba, Transformer, Transformer-MoE) built from the same code by
// changing the block pattern of a Config.
//
// Shapes are written [B, T, d]: batch, time, model width; D = 2d is the Mamba inner width,
// N the state size, K the conv kernel, R the dt rank, E the experts, F the expert hidden size.
//
// Variables live in context scopes named after the released checkpoint, so that the importer
// is a plain mapping (GoMLX stores linear weights as [in, out], PyTorch as [out, in]):
//
//	/embedding/word_embeddings          weight [V, d]
//	/decoder/layers/{i}/norm            weight [d]
//	/decoder/layers/{i}/mixer  (Mamba)  in_proj [d, 2D], conv1d_weight [K, D], conv1d_bias [D],
//	                                    x_proj [D, R+2N], dt_proj [R, D], dt_proj_bias [D],
//	                                    A_log [D, N], D [D], out_proj [D, d]
//	/decoder/layers/{i}/mixer  (MoE)    router_weight [d, E], router_bias [E],
//	                                    fc1 [E, d, 2F] (gate then up), fc2 [E, F, d]
//	/decoder/layers/{i}/mixer  (MLP)    fc1 [d, 2F] (gate then up), fc2 [F, d]
//	/decoder/layers/{i}/mixer  (attn)   wq, wk, wv [d, d], wo [d, d]
//	/decoder/final_layernorm            weight [d], bias [d]
package bm
