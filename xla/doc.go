// Package xla chooses where GoMLX computations run and creates that backend.
//
// The order is:
//
//  1. an explicit request: the -backend flag (AddFlag) or, without it, $GOMLX_BACKEND;
//  2. else a CUDA PJRT plugin found on this machine, when an NVIDIA device is present;
//  3. else GoMLX's pure-Go CPU backend ("go").
//
// Plugins are discovered, never downloaded (Discover): in $PJRT_PLUGIN_LIBRARY_PATH, in
// go-xla's install folders (~/.local/lib/go-xla, /usr/local/lib/go-xla), and in JAX
// installations (site-packages/jax_plugins/xla_cuda<major>/xla_cuda_plugin.so under
// $VIRTUAL_ENV, $CONDA_PREFIX, the user's site-packages, /opt/*/.venv and /usr/local). The
// newest CUDA major wins (xla_cuda13 before xla_cuda12).
//
// Requests: "go" forces the CPU; "cuda" takes the best CUDA plugin found; "xla" the best
// plugin found (CUDA first); "xla:<path>" (or "cuda:<path>") loads that plugin file; anything
// after a comma is passed to GoMLX as plugin options ("xla:<path>,tf32"). An explicit request
// that cannot be met is an error naming the request and the plugin path; only the automatic
// choice falls back, and Choice.Reason says so.
//
// Typical use in a command:
//
//	backendFlag := xla.AddFlag(fs)
//	...
//	backend, choice, err := xla.New(*backendFlag)
//	if err != nil { return err }
//	fmt.Println("backend:", choice)
package xla
