package xla

import (
	"cmp"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Candidate is a PJRT plugin file found on this machine. Discovery only checks that the file
// exists; loading it is New's job.
type Candidate struct {
	Path string `json:"path"` // absolute path of the plugin's shared library
	// Name is the plugin's short name: "cuda13" for JAX's xla_cuda13 package, or the <name> of
	// a pjrt_c_api_<name>_plugin.so file ("cuda", "cpu").
	Name string `json:"name"`
	// CUDA tells whether the plugin drives NVIDIA GPUs; CUDAMajor is the CUDA major version it
	// was built for, 0 when the file name does not tell.
	CUDA      bool   `json:"cuda"`
	CUDAMajor int    `json:"cuda_major,omitempty"`
	Source    string `json:"source"` // where it was found, e.g. "JAX in $VIRTUAL_ENV" or "go-xla folder"
}

// String describes the candidate on one line.
func (c Candidate) String() string {
	kind := "non-CUDA"
	if c.CUDA {
		kind = "CUDA"
		if c.CUDAMajor > 0 {
			kind += " " + strconv.Itoa(c.CUDAMajor)
		} else {
			kind += " (major unknown)"
		}
	}
	return c.Path + " [" + kind + ", " + c.Source + "]"
}

// Env is what discovery and choice read from the machine. Tests replace it with fake trees.
type Env struct {
	// Getenv reads an environment variable; os.Getenv when nil.
	Getenv func(key string) string
	// Home is the user's home folder (for ~/.local); os.UserHomeDir when empty.
	Home string
	// Root is prepended to the fixed system folders searched (/opt, /usr/local, /dev);
	// "" means the real root.
	Root string
}

// SystemEnv is the real machine's environment.
func SystemEnv() Env { return Env{} }

func (e Env) getenv(k string) string {
	if e.Getenv == nil {
		return os.Getenv(k)
	}
	return e.Getenv(k)
}

func (e Env) home() string {
	if e.Home != "" {
		return e.Home
	}
	h, _ := os.UserHomeDir()
	return h
}

func (e Env) sys(p string) string { return filepath.Join(e.Root+"/", p) }

// place is one location searched for plugins.
type place struct {
	pattern string // filepath.Glob pattern of plugin files
	source  string
	shown   string // the pattern as SearchedPlaces shows it, shared by similar places
}

// goXLAPatterns are the file names go-xla recognises as PJRT plugins.
var goXLAPatterns = []string{"pjrt_c_api_*_plugin.so", "pjrt-plugin-*.so", "pjrt_plugin_*.so"}

// jaxPlugin is the CUDA plugin's location inside a Python site-packages folder.
const jaxPlugin = "jax_plugins/xla_cuda*/xla_cuda_plugin.so"

// places lists the locations searched, in discovery order.
func (e Env) places() []place {
	var ps []place
	dirPlaces := func(dir, source string) {
		for _, pat := range goXLAPatterns {
			ps = append(ps, place{filepath.Join(dir, pat), source, filepath.Join(dir, "pjrt_c_api_*_plugin.so|pjrt[-_]plugin[-_]*.so")})
		}
	}
	sitePlaces := func(prefix, source string) {
		for _, sp := range []string{"lib/python3*/site-packages", "lib/python3*/dist-packages"} {
			ps = append(ps, place{filepath.Join(prefix, sp, jaxPlugin), source, filepath.Join(prefix, "lib/python3*/(site|dist)-packages", jaxPlugin)})
		}
	}
	for _, dir := range filepath.SplitList(e.getenv("PJRT_PLUGIN_LIBRARY_PATH")) {
		if dir != "" {
			dirPlaces(dir, "$PJRT_PLUGIN_LIBRARY_PATH")
		}
	}
	if h := e.home(); h != "" {
		dirPlaces(filepath.Join(h, ".local/lib/go-xla"), "go-xla folder")
	}
	dirPlaces(e.sys("usr/local/lib/go-xla"), "go-xla folder")
	if v := e.getenv("VIRTUAL_ENV"); v != "" {
		sitePlaces(v, "JAX in $VIRTUAL_ENV")
	}
	if v := e.getenv("CONDA_PREFIX"); v != "" {
		sitePlaces(v, "JAX in $CONDA_PREFIX")
	}
	if h := e.home(); h != "" {
		sitePlaces(filepath.Join(h, ".local"), "JAX in user site-packages")
	}
	sitePlaces(e.sys("opt/*/.venv"), "JAX in /opt/*/.venv")
	sitePlaces(e.sys("usr/local"), "JAX in /usr/local")
	return ps
}

// SearchedPlaces returns the patterns that discovery looks at, in order, for messages:
// "|" separates alternative file names and "(site|dist)" alternative folders.
func (e Env) SearchedPlaces() []string {
	var out []string
	for _, p := range e.places() {
		if !slices.Contains(out, p.shown) {
			out = append(out, p.shown)
		}
	}
	return out
}

var (
	reJAXCUDA   = regexp.MustCompile(`xla_cuda(\d+)$`)
	reGoXLAName = []*regexp.Regexp{
		regexp.MustCompile(`^pjrt_c_api_(.+)_plugin\.so$`),
		regexp.MustCompile(`^pjrt[-_]plugin[-_](.+)\.so$`),
	}
	reTrailingDigits = regexp.MustCompile(`(\d+)$`)
)

// candidateFromPath works out a plugin's name and CUDA version from its path.
func candidateFromPath(path, source string) Candidate {
	c := Candidate{Path: path, Source: source}
	base := filepath.Base(path)
	if base == "xla_cuda_plugin.so" {
		dir := filepath.Base(filepath.Dir(path))
		c.CUDA = true
		c.Name = "cuda"
		if m := reJAXCUDA.FindStringSubmatch(dir); m != nil {
			c.CUDAMajor, _ = strconv.Atoi(m[1])
			c.Name = "cuda" + m[1]
		}
		return c
	}
	c.Name = strings.TrimSuffix(base, filepath.Ext(base))
	for _, re := range reGoXLAName {
		if m := re.FindStringSubmatch(base); m != nil {
			c.Name = m[1]
			break
		}
	}
	lower := strings.ToLower(c.Name)
	if strings.Contains(lower, "cuda") || strings.Contains(lower, "nvidia") || strings.Contains(lower, "gpu") {
		c.CUDA = true
		if m := reTrailingDigits.FindStringSubmatch(lower); m != nil {
			c.CUDAMajor, _ = strconv.Atoi(m[1])
		}
	}
	return c
}

// Discover lists the PJRT plugins found on this machine, best first: CUDA plugins before the
// others, a newer CUDA major before an older one (xla_cuda13 before xla_cuda12), and otherwise
// in search order ($PJRT_PLUGIN_LIBRARY_PATH, go-xla's folders, then JAX installations in
// $VIRTUAL_ENV, $CONDA_PREFIX, the user's site-packages, /opt/*/.venv and /usr/local).
// A file reached twice (e.g. through a symbolic link) is listed once.
func Discover() []Candidate { return SystemEnv().Discover() }

// Discover is Discover on the given environment.
func (e Env) Discover() []Candidate {
	var out []Candidate
	seen := map[string]bool{}
	for _, p := range e.places() {
		matches, _ := filepath.Glob(p.pattern)
		slices.Sort(matches)
		for _, m := range matches {
			fi, err := os.Stat(m)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			abs, err := filepath.Abs(m)
			if err != nil {
				continue
			}
			key := abs
			if r, err := filepath.EvalSymlinks(abs); err == nil {
				key = r
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, candidateFromPath(abs, p.source))
		}
	}
	slices.SortStableFunc(out, func(a, b Candidate) int {
		if a.CUDA != b.CUDA {
			if a.CUDA {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.CUDAMajor, a.CUDAMajor)
	})
	return out
}

// HasNVIDIADevice reports whether an NVIDIA GPU device node (/dev/nvidia0, /dev/nvidia1, ...)
// exists.
func (e Env) HasNVIDIADevice() bool {
	m, _ := filepath.Glob(e.sys("dev/nvidia[0-9]*"))
	return len(m) > 0
}

// CUDADataDir returns the folder to pass to XLA as --xla_gpu_cuda_data_dir for a CUDA plugin:
// the one holding nvvm/libdevice inside the nvidia/ package folder that pip installs next to
// JAX (site-packages/nvidia/cu<major>, …/cuda_nvcc, …) or next to a go-xla plugin. ok is
// false when no such folder exists; XLA then uses its own search.
func CUDADataDir(c Candidate) (dir string, ok bool) {
	var subs []string
	if c.CUDAMajor > 0 {
		subs = append(subs, "cu"+strconv.Itoa(c.CUDAMajor))
	}
	subs = append(subs, "cuda_nvcc", "cu13", "cu12", ".")
	d := filepath.Dir(c.Path)
	for range 3 {
		nv := filepath.Join(d, "nvidia")
		if fi, err := os.Stat(nv); err == nil && fi.IsDir() {
			for _, s := range subs {
				cand := filepath.Join(nv, s)
				if fi, err := os.Stat(filepath.Join(cand, "nvvm", "libdevice")); err == nil && fi.IsDir() {
					return cand, true
				}
			}
		}
		d = filepath.Dir(d)
	}
	return "", false
}
