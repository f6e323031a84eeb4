// Package train is the training loop of the blackmamba experiments and of
// `blackmamba train`: one compiled step (forward, gradients, global-norm clipping and AdamW
// with per-variable weight-decay exclusion and a warmup + cosine schedule computed from an
// in-graph step counter), a run loop with progress lines, a JSON Lines metrics file
// (results.TrainRecord), periodic held-out evaluation, and atomic safetensors checkpoints of
// every variable plus the data position, so that a killed run resumes to the same result.
//
// The package depends on the model only through a LossFn and on the data only through the
// Batches interface:
//
//	tr, err := train.New(backend, ctx, lossFn, train.Config{Batch: 8, SeqLen: 256,
//		Optimizer: train.DefaultAdamW(1e-3, 10000), FLOPsPerToken: f, Dir: "runs/a",
//		LogEvery: 10, CheckpointEvery: 500, EvalEvery: 500, HeldOut: heldOut, Resume: true})
//	summary, err := tr.Run(trainBatches)
//
// With Config.Devices = N > 1 the same steps run data-parallel on N devices of one backend (the
// GPUs of one host): each batch is split over a one-axis device mesh named DataAxis, every
// variable is replicated, and XLA's SPMD partitioner inserts the all-reduces, so the results are
// those of the global batch on one device up to floating-point reduction order. The pure-Go
// backend has a single device and cannot compile for a mesh: there Devices must be 0 or 1,
// which trains without a mesh.
package train
