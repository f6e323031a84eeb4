package xla

import (
	"fmt"
	"os"
	"strings"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego" // registers "go"
	gomlxxla "github.com/gomlx/gomlx/backends/xla"
)

// NoAutoInstallEnv set to anything stops GoMLX's XLA backend from downloading PJRT plugins.
const NoAutoInstallEnv = gomlxxla.NoAutoInstallEnv

func init() {
	// Plugins are only ever discovered, never downloaded: GoMLX's XLA backend would otherwise
	// fetch plugins from the network the first time it is asked for one by name.
	gomlxxla.EnableAutoInstall(false)
}

// New chooses a backend (see Choose) and creates it. An explicit request that cannot be met
// is an error naming what was asked for and the plugin path; an automatic choice whose CUDA
// plugin fails to load tries the next CUDA plugin, then falls back to the pure-Go backend and
// says so in Choice.Reason.
func New(explicit string) (backends.Backend, Choice, error) { return SystemEnv().New(explicit) }

// New is New on the given environment.
func (e Env) New(explicit string) (backends.Backend, Choice, error) {
	ch, err := e.Choose(explicit)
	if err != nil {
		return nil, ch, err
	}
	if ch.Backend == BackendGo {
		b, err := newBackend(ch.Config)
		if err != nil {
			return nil, ch, fmt.Errorf("creating the pure-Go backend %q: %w", ch.Config, err)
		}
		return b, ch, nil
	}
	b, err := e.load(ch)
	if err == nil {
		return b, ch, nil
	}
	if ch.Explicit() {
		return nil, ch, fmt.Errorf("backend %q (from %s): %w", ch.Requested, ch.From, err)
	}
	failures := []string{err.Error()}
	for _, c := range ch.Fallbacks {
		next := ch
		next.Plugin = &c
		next.Config = BackendXLA + ":" + c.Path
		if b, err2 := e.load(next); err2 == nil {
			next.Reason = "CUDA PJRT plugin found; the better one failed: " + strings.Join(failures, "; ")
			next.Fallbacks = nil
			return b, next, nil
		} else {
			failures = append(failures, err2.Error())
		}
	}
	ch.Backend, ch.Config, ch.Plugin, ch.Fallbacks = BackendGo, BackendGo, nil, nil
	ch.Reason = "no CUDA PJRT plugin could be loaded (" + strings.Join(failures, "; ") + "), using the pure-Go CPU backend"
	b, err = newBackend(ch.Config)
	if err != nil {
		return nil, ch, fmt.Errorf("creating the pure-Go backend: %w", err)
	}
	return b, ch, nil
}

// load prepares the process environment for the chosen plugin and creates the XLA backend.
func (e Env) load(ch Choice) (backends.Backend, error) {
	PrepareProcessEnv(ch.Plugin)
	var b backends.Backend
	var err error
	switch v := os.Getenv(GPUMemoryEnv); {
	case v != "" && v != "grow":
		return nil, fmt.Errorf("$%s=%q: want \"grow\" or nothing", GPUMemoryEnv, v)
	case ch.Plugin != nil && ch.Plugin.CUDA && v == "grow":
		b, err = newGrowingBackend(ch.Config)
	default:
		b, err = newBackend(ch.Config)
	}
	if err != nil {
		return nil, fmt.Errorf("loading PJRT plugin %s: %w", ch.Plugin.Path, err)
	}
	return b, nil
}

// PrepareProcessEnv sets the environment variables go-xla and XLA read when a plugin loads:
//   - GOMLX_NO_AUTO_INSTALL=1, so nothing is ever downloaded;
//   - for CUDA plugins, GOPJRT_CUDA_CHECKS=0 (unless set), because go-xla's check only knows its
//     own install layout: for a JAX plugin it warns about a missing nvidia/ folder, and when it
//     does find one it points XLA_FLAGS at a fixed path of its author's machine;
//   - for CUDA plugins, --xla_gpu_cuda_data_dir in XLA_FLAGS (unless already there) when
//     CUDADataDir finds the CUDA data folder pip installed beside the plugin.
//
// New calls it; it is exported for programs that create backends themselves.
func PrepareProcessEnv(plugin *Candidate) {
	if _, ok := os.LookupEnv(NoAutoInstallEnv); !ok {
		_ = os.Setenv(NoAutoInstallEnv, "1")
	}
	if plugin == nil || !plugin.CUDA {
		return
	}
	if _, ok := os.LookupEnv("GOPJRT_CUDA_CHECKS"); !ok {
		_ = os.Setenv("GOPJRT_CUDA_CHECKS", "0")
	}
	flags := os.Getenv("XLA_FLAGS")
	if strings.Contains(flags, "--xla_gpu_cuda_data_dir") {
		return
	}
	if dir, ok := CUDADataDir(*plugin); ok {
		_ = os.Setenv("XLA_FLAGS", strings.TrimSpace(flags+" --xla_gpu_cuda_data_dir="+dir))
	}
}

// GPUMemoryEnv selects how a CUDA plugin takes device memory: unset (XLA's default, which
// reserves most of the memory when the client starts) or "grow" (the allocator grows its pool
// as needed and never returns it, so the device's used memory, as nvidia-smi reports it, is
// the process's high-water mark; benchmarks use it to report peak memory).
const GPUMemoryEnv = "BLACKMAMBA_GPU_MEMORY"

// newGrowingBackend creates the XLA backend of config ("xla:<plugin>[,options]") with the
// PJRT client option preallocate=false.
func newGrowingBackend(config string) (b backends.Backend, err error) {
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("%v", r)
		}
	}()
	return gomlxxla.NewWithOptions(strings.TrimPrefix(config, BackendXLA+":"), pjrt.NamedValuesMap{"preallocate": false})
}

// CPUConfig is the configuration of GoMLX's pure-Go backend that this project uses when asked
// for "go": operations run one at a time, each still spreading its work over every core.
// simplego v0.26 otherwise runs independent operations side by side on its worker pool, and
// matrix multiplications that wait for workers from inside that pool can deadlock it (seen with
// the several independent DotGenerals of a backward pass on 2 cores). Tests create their CPU
// backend with it too.
const CPUConfig = BackendGo + ":ops_sequential"

// newBackend creates a GoMLX backend from a configuration ("go" becomes CPUConfig), turning
// GoMLX's panics (it panics on unknown backend names) into errors.
func newBackend(config string) (b backends.Backend, err error) {
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("%v", r)
		}
	}()
	if config == BackendGo {
		config = CPUConfig
	}
	return backends.NewWithConfig(config)
}

// CPUDecodingConfig is CPUConfig with the pure-Go backend's DotGeneral for small matrices forced:
// a decoding step multiplies one row by each weight matrix, and simplego's default choice for
// the larger weights copies every weight into blocks at each call. On 2 cores (blackmamba bench
// -what decode, float32), a `small` decoding step took 1.28 s with CPUConfig, 0.69 s with the
// small-matrix path, and 0.43 s with it and the weights' transposed copies
// (bm.TransposeStepWeights); a `tiny` step, whose cost is the 50K-row head, 41 and 2.7 ms.
// Whole sequences are another matter: scoring 10 PIQA examples with `small` (blackmamba eval)
// took 220 s with CPUConfig and 378 s with the small-matrix path, so only decoding uses it.
const CPUDecodingConfig = CPUConfig + ",dotgeneral_small"

// NewForDecoding is New for programs that mostly decode (generation): when the choice is the
// pure-Go backend in its plain configuration ("go"), it creates it with CPUDecodingConfig and
// says so in Choice.Reason. Any other choice, explicit configurations included, is New's.
func NewForDecoding(explicit string) (backends.Backend, Choice, error) {
	return SystemEnv().NewForDecoding(explicit)
}

// NewForDecoding is NewForDecoding on the given environment.
func (e Env) NewForDecoding(explicit string) (backends.Backend, Choice, error) {
	b, ch, err := e.New(explicit)
	if err != nil || ch.Backend != BackendGo || ch.Config != BackendGo {
		return b, ch, err
	}
	d, err := newBackend(CPUDecodingConfig)
	if err != nil {
		return b, ch, nil // keep the plain backend
	}
	b.Finalize()
	ch.Config = CPUDecodingConfig
	ch.Reason += "; matrix products set up for decoding (" + CPUDecodingConfig + ")"
	return d, ch, nil
}

// IsCUDA reports whether b is the XLA backend on a CUDA PJRT plugin (an NVIDIA GPU).
func IsCUDA(b backends.Backend) bool {
	return b != nil && b.Name() == BackendXLA && strings.Contains(strings.ToLower(b.Description()), "cuda")
}

// IsPureGo reports whether b is GoMLX's pure-Go backend (whose Name is "SimpleGo (go)" and
// String "go").
func IsPureGo(b backends.Backend) bool { return b != nil && b.String() == BackendGo }
