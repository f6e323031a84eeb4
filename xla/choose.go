package xla

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Backend names of a Choice.
const (
	BackendGo  = "go"  // GoMLX's pure-Go CPU backend (simplego)
	BackendXLA = "xla" // XLA through a PJRT plugin
)

// EnvBackend is the environment variable read when no -backend flag is given. It is the same
// variable GoMLX itself reads, with the same "<backend>:<config>" syntax.
const EnvBackend = "GOMLX_BACKEND"

// Choice is where computations will run, and why.
type Choice struct {
	Backend string     `json:"backend"`          // BackendGo or BackendXLA
	Config  string     `json:"config"`           // the GoMLX backend configuration: "go", or "xla:<absolute plugin path>[,options]"
	Plugin  *Candidate `json:"plugin,omitempty"` // the PJRT plugin for BackendXLA, nil for BackendGo
	// Requested is what was asked for ("" when nothing was) and From where: "-backend" or
	// "$GOMLX_BACKEND". An explicit request never falls back to another backend.
	Requested  string      `json:"requested,omitempty"`
	From       string      `json:"from,omitempty"`
	Reason     string      `json:"reason"` // one sentence on why this backend was chosen
	Candidates []Candidate `json:"-"`      // every plugin discovered, best first
	// Fallbacks are the other CUDA plugins New tries, in order, when Plugin fails to load and
	// the choice was automatic (the CPU backend comes after them).
	Fallbacks []Candidate `json:"fallbacks,omitempty"`
}

// Explicit reports whether the user asked for a backend (by flag or environment).
func (c Choice) Explicit() bool { return c.Requested != "" }

// String describes the choice on one line.
func (c Choice) String() string {
	s := c.Backend
	if c.Plugin != nil {
		s += " (" + c.Plugin.String() + ")"
	}
	return s + ": " + c.Reason
}

// AddFlag defines the -backend flag every subcommand uses and returns its value, to pass to New.
func AddFlag(fs *flag.FlagSet) *string {
	return fs.String("backend", "", `where to run: "go" (pure-Go CPU), "cuda" (best CUDA PJRT plugin found), `+
		`"xla" (best PJRT plugin found), or "xla:<path of a PJRT plugin .so>"; `+
		`default $GOMLX_BACKEND, else a CUDA plugin found on this machine, else "go"`)
}

// Choose decides where to run without loading anything. explicit is the -backend flag's value;
// when empty, $GOMLX_BACKEND is used; when both are empty, the best CUDA plugin discovered is
// chosen if an NVIDIA device exists, else the pure-Go CPU backend.
func Choose(explicit string) (Choice, error) { return SystemEnv().Choose(explicit) }

// Choose is Choose on the given environment.
func (e Env) Choose(explicit string) (Choice, error) {
	ch := Choice{Candidates: e.Discover()}
	switch {
	case explicit != "":
		ch.Requested, ch.From = explicit, "-backend"
	case e.getenv(EnvBackend) != "":
		ch.Requested, ch.From = e.getenv(EnvBackend), "$"+EnvBackend
	}
	var cuda, other []Candidate
	for _, c := range ch.Candidates {
		if c.CUDA {
			cuda = append(cuda, c)
		} else {
			other = append(other, c)
		}
	}
	useGo := func(config, reason string) (Choice, error) {
		ch.Backend, ch.Config, ch.Reason = BackendGo, config, reason
		return ch, nil
	}
	usePlugin := func(c Candidate, opts, reason string) (Choice, error) {
		ch.Backend, ch.Plugin, ch.Reason = BackendXLA, &c, reason
		ch.Config = BackendXLA + ":" + c.Path + opts
		return ch, nil
	}

	if !ch.Explicit() {
		if len(cuda) == 0 {
			return useGo(BackendGo, "no CUDA PJRT plugin found on this machine")
		}
		if !e.HasNVIDIADevice() {
			return useGo(BackendGo, fmt.Sprintf("found %d CUDA PJRT plugin(s) but no NVIDIA device (/dev/nvidia0, ...)", len(cuda)))
		}
		ch.Fallbacks = cuda[1:]
		return usePlugin(cuda[0], "", "CUDA PJRT plugin found and an NVIDIA device present")
	}

	req := ch.Requested
	name, cfg, _ := strings.Cut(req, ":")
	plugin, opts := cfg, ""
	if i := strings.IndexByte(cfg, ','); i >= 0 {
		plugin, opts = cfg[:i], cfg[i:]
	}
	asked := fmt.Sprintf("%q (from %s)", req, ch.From)
	notFound := func(what string) error {
		return fmt.Errorf("backend %s: %s; searched %s; give the plugin's path with -backend xla:<path of xla_cuda_plugin.so or pjrt_c_api_<name>_plugin.so>",
			asked, what, strings.Join(e.SearchedPlaces(), ", "))
	}
	switch strings.ToLower(name) {
	case "go", "simplego", "cpu":
		config := BackendGo
		if cfg != "" {
			config += ":" + cfg
		}
		return useGo(config, "requested by "+ch.From)
	case "cuda", "gpu":
		if plugin != "" {
			break
		}
		if len(cuda) == 0 {
			return ch, notFound("no CUDA PJRT plugin found")
		}
		return usePlugin(cuda[0], opts, "requested by "+ch.From+"; best CUDA plugin found")
	case "xla", "stablehlo", "hlo", "shlo", "pjrt":
		if plugin != "" {
			break
		}
		switch {
		case len(cuda) > 0:
			return usePlugin(cuda[0], opts, "requested by "+ch.From+"; best CUDA plugin found")
		case len(other) > 0:
			return usePlugin(other[0], opts, "requested by "+ch.From+"; no CUDA plugin, using the first other plugin found")
		}
		return ch, notFound("no PJRT plugin found")
	default:
		return ch, fmt.Errorf("backend %s: unknown backend %q; use go, cuda, xla or xla:<path of a PJRT plugin>", asked, name)
	}

	// A plugin given by path or by name.
	if strings.ContainsRune(plugin, os.PathSeparator) || strings.HasSuffix(plugin, ".so") {
		abs, err := filepath.Abs(plugin)
		if err != nil {
			return ch, fmt.Errorf("backend %s: plugin path %q: %w", asked, plugin, err)
		}
		fi, err := os.Stat(abs)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return ch, fmt.Errorf("backend %s: PJRT plugin %s does not exist", asked, abs)
		case err != nil:
			return ch, fmt.Errorf("backend %s: PJRT plugin %s: %w", asked, abs, err)
		case !fi.Mode().IsRegular():
			return ch, fmt.Errorf("backend %s: PJRT plugin %s is not a regular file", asked, abs)
		}
		c := candidateFromPath(abs, "given by "+ch.From)
		for _, d := range ch.Candidates {
			if d.Path == abs {
				c.Source = d.Source + ", given by " + ch.From
			}
		}
		return usePlugin(c, opts, "requested by "+ch.From)
	}
	for _, c := range ch.Candidates {
		if c.Name == plugin {
			return usePlugin(c, opts, fmt.Sprintf("requested by %s; plugin named %q found", ch.From, plugin))
		}
	}
	if (plugin == "cuda" || plugin == "gpu") && len(cuda) > 0 {
		return usePlugin(cuda[0], opts, "requested by "+ch.From+"; best CUDA plugin found")
	}
	var names []string
	for _, c := range ch.Candidates {
		names = append(names, c.Name)
	}
	return ch, notFound(fmt.Sprintf("no PJRT plugin named %q found (found: %q)", plugin, names))
}
