package xla

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fakeMachine is a temporary folder tree standing for a machine: <tmp>/home is the user's
// home, <tmp>/sys the root of the fixed system folders, <tmp>/venv and <tmp>/conda Python
// environments, <tmp>/pjrt a folder for $PJRT_PLUGIN_LIBRARY_PATH.
type fakeMachine struct {
	t    *testing.T
	dir  string
	vars map[string]string
}

func newFakeMachine(t *testing.T) *fakeMachine {
	return &fakeMachine{t: t, dir: t.TempDir(), vars: map[string]string{}}
}

// touch creates empty files (and their folders) under the fake machine and returns the
// absolute path of the last one.
func (m *fakeMachine) touch(rel ...string) string {
	var p string
	for _, r := range rel {
		p = filepath.Join(m.dir, r)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			m.t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			m.t.Fatal(err)
		}
	}
	return p
}

func (m *fakeMachine) mkdir(rel string) string {
	p := filepath.Join(m.dir, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		m.t.Fatal(err)
	}
	return p
}

func (m *fakeMachine) path(rel string) string { return filepath.Join(m.dir, rel) }

func (m *fakeMachine) env() Env {
	return Env{
		Getenv: func(k string) string { return m.vars[k] },
		Home:   filepath.Join(m.dir, "home"),
		Root:   filepath.Join(m.dir, "sys"),
	}
}

const (
	optCUDA13   = "sys/opt/torch/.venv/lib/python3.12/site-packages/jax_plugins/xla_cuda13/xla_cuda_plugin.so"
	optCUDA12   = "sys/opt/torch/.venv/lib/python3.12/site-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so"
	venvCUDA12  = "venv/lib/python3.11/site-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so"
	condaCUDA12 = "conda/lib/python3.10/site-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so"
	userCUDA13  = "home/.local/lib/python3.12/site-packages/jax_plugins/xla_cuda13/xla_cuda_plugin.so"
	usrCUDA12   = "sys/usr/local/lib/python3.11/dist-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so"
	goxlaCUDA   = "home/.local/lib/go-xla/pjrt_c_api_cuda_plugin.so"
	goxlaCPU    = "sys/usr/local/lib/go-xla/pjrt_c_api_cpu_plugin.so"
	pjrtCPU     = "pjrt/pjrt_c_api_cpu_plugin.so"
	device      = "sys/dev/nvidia0"
)

type wantCand struct {
	rel    string
	name   string
	cuda   bool
	major  int
	source string
}

func TestDiscoverOrder(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		vars  map[string]string
		want  []wantCand
	}{
		{name: "nothing", want: nil},
		{
			name:  "newest CUDA major first",
			files: []string{optCUDA12, optCUDA13},
			want: []wantCand{
				{optCUDA13, "cuda13", true, 13, "JAX in /opt/*/.venv"},
				{optCUDA12, "cuda12", true, 12, "JAX in /opt/*/.venv"},
			},
		},
		{
			name:  "major beats search order; search order breaks ties",
			files: []string{venvCUDA12, condaCUDA12, userCUDA13, usrCUDA12},
			vars:  map[string]string{"VIRTUAL_ENV": "venv", "CONDA_PREFIX": "conda"},
			want: []wantCand{
				{userCUDA13, "cuda13", true, 13, "JAX in user site-packages"},
				{venvCUDA12, "cuda12", true, 12, "JAX in $VIRTUAL_ENV"},
				{condaCUDA12, "cuda12", true, 12, "JAX in $CONDA_PREFIX"},
				{usrCUDA12, "cuda12", true, 12, "JAX in /usr/local"},
			},
		},
		{
			name:  "go-xla plugins: CUDA of unknown major after known majors, CPU last",
			files: []string{goxlaCUDA, goxlaCPU, pjrtCPU, venvCUDA12},
			vars:  map[string]string{"VIRTUAL_ENV": "venv", "PJRT_PLUGIN_LIBRARY_PATH": "pjrt"},
			want: []wantCand{
				{venvCUDA12, "cuda12", true, 12, "JAX in $VIRTUAL_ENV"},
				{goxlaCUDA, "cuda", true, 0, "go-xla folder"},
				{pjrtCPU, "cpu", false, 0, "$PJRT_PLUGIN_LIBRARY_PATH"},
				{goxlaCPU, "cpu", false, 0, "go-xla folder"},
			},
		},
		{
			name:  "virtualenv not searched unless active",
			files: []string{venvCUDA12},
			want:  nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(t)
			m.touch(tc.files...)
			for k, v := range tc.vars {
				// Variables hold folders (colon-separated for the PJRT path) relative to the fake machine.
				var parts []string
				for _, p := range filepath.SplitList(v) {
					parts = append(parts, m.path(p))
				}
				m.vars[k] = strings.Join(parts, string(filepath.ListSeparator))
			}
			got := m.env().Discover()
			if len(got) != len(tc.want) {
				t.Fatalf("Discover found %d plugins, want %d: %v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Path != m.path(w.rel) || g.Name != w.name || g.CUDA != w.cuda || g.CUDAMajor != w.major || g.Source != w.source {
					t.Errorf("plugin %d = %+v, want path %s name %q cuda %v major %d source %q",
						i, g, m.path(w.rel), w.name, w.cuda, w.major, w.source)
				}
			}
		})
	}
}

func TestDiscoverSkipsDuplicatesAndFolders(t *testing.T) {
	m := newFakeMachine(t)
	real := m.touch(optCUDA13)
	// The same plugin reached a second time, through a virtualenv that is a symbolic link.
	if err := os.Symlink(m.path("sys/opt/torch/.venv"), m.path("venv")); err != nil {
		t.Fatal(err)
	}
	m.vars["VIRTUAL_ENV"] = m.path("venv")
	// A folder with a plugin's name is not a plugin.
	m.mkdir("sys/opt/other/.venv/lib/python3.12/site-packages/jax_plugins/xla_cuda14/xla_cuda_plugin.so")
	got := m.env().Discover()
	if len(got) != 1 {
		t.Fatalf("Discover = %v, want exactly one plugin", got)
	}
	if got[0].Source != "JAX in $VIRTUAL_ENV" || !strings.HasSuffix(got[0].Path, "xla_cuda13/xla_cuda_plugin.so") {
		t.Errorf("Discover = %+v, want the plugin found first (through $VIRTUAL_ENV, resolving to %s)", got[0], real)
	}
}

func TestChoose(t *testing.T) {
	tests := []struct {
		name      string
		files     []string
		vars      map[string]string
		explicit  string
		backend   string // want; "" when an error is expected
		plugin    string // want plugin path relative to the fake machine; "" for none
		suffix    string // want Config suffix after the plugin path
		from      string
		reason    string // substring of Reason
		fallbacks int
		errHas    []string // substrings of the error
	}{
		{name: "auto, nothing found", backend: BackendGo, reason: "no CUDA PJRT plugin found"},
		{name: "auto, plugin but no device", files: []string{optCUDA13}, backend: BackendGo, reason: "no NVIDIA device"},
		{name: "auto, plugin and device", files: []string{optCUDA12, optCUDA13, device}, backend: BackendXLA,
			plugin: optCUDA13, reason: "NVIDIA device present", fallbacks: 1},
		{name: "auto ignores CPU plugins", files: []string{goxlaCPU, device}, backend: BackendGo, reason: "no CUDA"},
		{name: "env go", files: []string{optCUDA13, device}, vars: map[string]string{EnvBackend: "go"},
			backend: BackendGo, from: "$GOMLX_BACKEND"},
		{name: "flag beats env", files: []string{optCUDA13, device}, vars: map[string]string{EnvBackend: "xla"},
			explicit: "go", backend: BackendGo, from: "-backend"},
		{name: "cuda explicit without device still chosen", files: []string{optCUDA13}, explicit: "cuda",
			backend: BackendXLA, plugin: optCUDA13, from: "-backend"},
		{name: "cuda explicit, none found", files: []string{goxlaCPU}, explicit: "cuda",
			errHas: []string{`"cuda" (from -backend)`, "no CUDA PJRT plugin found", "jax_plugins"}},
		{name: "xla picks CUDA first", files: []string{goxlaCPU, optCUDA12}, explicit: "xla",
			backend: BackendXLA, plugin: optCUDA12},
		{name: "xla falls to a CPU plugin", files: []string{goxlaCPU}, explicit: "xla",
			backend: BackendXLA, plugin: goxlaCPU, reason: "no CUDA plugin"},
		{name: "xla, nothing found", explicit: "xla", errHas: []string{"no PJRT plugin found"}},
		{name: "xla by path with options", files: []string{optCUDA13}, explicit: "xla:" + optCUDA13 + ",tf32",
			backend: BackendXLA, plugin: optCUDA13, suffix: ",tf32"},
		{name: "env by path", files: []string{optCUDA13}, vars: map[string]string{EnvBackend: "xla:" + optCUDA13},
			backend: BackendXLA, plugin: optCUDA13, from: "$GOMLX_BACKEND"},
		{name: "xla by missing path", explicit: "xla:" + optCUDA13,
			errHas: []string{"does not exist", "xla_cuda13/xla_cuda_plugin.so"}},
		{name: "xla by name", files: []string{optCUDA13, optCUDA12}, explicit: "xla:cuda12",
			backend: BackendXLA, plugin: optCUDA12},
		{name: "xla:cuda means best CUDA", files: []string{optCUDA13, optCUDA12}, explicit: "xla:cuda",
			backend: BackendXLA, plugin: optCUDA13},
		{name: "xla by unknown name", files: []string{optCUDA13}, explicit: "xla:tpu",
			errHas: []string{`no PJRT plugin named "tpu"`, `"cuda13"`}},
		{name: "unknown backend", explicit: "tpu", errHas: []string{`unknown backend "tpu"`, "go, cuda, xla"}},
		{name: "go with options", explicit: "go:parallelism=2", backend: BackendGo},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(t)
			m.touch(tc.files...)
			abs := func(s string) string { // make "xla:<rel>" requests absolute on the fake machine
				if name, cfg, ok := strings.Cut(s, ":"); ok && strings.HasPrefix(cfg, "sys/") {
					return name + ":" + m.path(cfg)
				}
				return s
			}
			for k, v := range tc.vars {
				m.vars[k] = abs(v)
			}
			ch, err := m.env().Choose(abs(tc.explicit))
			if tc.backend == "" {
				if err == nil {
					t.Fatalf("Choose(%q) = %v, want an error", tc.explicit, ch)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Choose(%q): %v", tc.explicit, err)
			}
			if ch.Backend != tc.backend {
				t.Errorf("Backend = %q, want %q (%v)", ch.Backend, tc.backend, ch)
			}
			if tc.plugin == "" {
				if ch.Plugin != nil {
					t.Errorf("Plugin = %v, want none", ch.Plugin)
				}
				if !strings.HasPrefix(ch.Config, BackendGo) {
					t.Errorf("Config = %q, want the go backend", ch.Config)
				}
			} else {
				want := m.path(tc.plugin)
				if ch.Plugin == nil || ch.Plugin.Path != want {
					t.Fatalf("Plugin = %v, want %s", ch.Plugin, want)
				}
				if ch.Config != "xla:"+want+tc.suffix {
					t.Errorf("Config = %q, want %q", ch.Config, "xla:"+want+tc.suffix)
				}
			}
			wantFrom := tc.from
			if wantFrom == "" && tc.explicit != "" {
				wantFrom = "-backend"
			}
			if ch.From != wantFrom {
				t.Errorf("From = %q, want %q", ch.From, wantFrom)
			}
			if !strings.Contains(ch.Reason, tc.reason) {
				t.Errorf("Reason = %q, want it to contain %q", ch.Reason, tc.reason)
			}
			if len(ch.Fallbacks) != tc.fallbacks {
				t.Errorf("Fallbacks = %v, want %d", ch.Fallbacks, tc.fallbacks)
			}
		})
	}
}

func TestCUDADataDir(t *testing.T) {
	tests := []struct {
		name   string
		plugin string
		dirs   []string
		want   string // relative to the fake machine; "" = not found
	}{
		{"none", optCUDA13, nil, ""},
		{"nvidia folder without libdevice", optCUDA13, []string{"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas"}, ""},
		{"cu13 layout", optCUDA13, []string{
			"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu12/nvvm/libdevice",
			"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/nvvm/libdevice",
		}, "sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13"},
		{"cuda12 prefers cu12", optCUDA12, []string{
			"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/nvvm/libdevice",
			"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu12/nvvm/libdevice",
		}, "sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu12"},
		{"cuda_nvcc layout", optCUDA12, []string{"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cuda_nvcc/nvvm/libdevice"},
			"sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cuda_nvcc"},
		{"go-xla layout", goxlaCUDA, []string{"home/.local/lib/go-xla/nvidia/nvvm/libdevice"}, "home/.local/lib/go-xla/nvidia"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(t)
			c := candidateFromPath(m.touch(tc.plugin), "test")
			for _, d := range tc.dirs {
				m.mkdir(d)
			}
			got, ok := CUDADataDir(c)
			if tc.want == "" {
				if ok {
					t.Errorf("CUDADataDir = %q, want none", got)
				}
				return
			}
			if !ok || filepath.Clean(got) != m.path(tc.want) {
				t.Errorf("CUDADataDir = %q, %v; want %q", got, ok, m.path(tc.want))
			}
		})
	}
}

func TestPrepareProcessEnv(t *testing.T) {
	m := newFakeMachine(t)
	c := candidateFromPath(m.touch(optCUDA13), "test")
	data := m.mkdir("sys/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/nvvm/libdevice")
	t.Setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
	t.Setenv("GOPJRT_CUDA_CHECKS", "")
	os.Unsetenv("GOPJRT_CUDA_CHECKS")
	PrepareProcessEnv(&c)
	want := "--xla_dump_to=/tmp/x --xla_gpu_cuda_data_dir=" + filepath.Dir(filepath.Dir(data))
	if got := os.Getenv("XLA_FLAGS"); got != want {
		t.Errorf("XLA_FLAGS = %q, want %q", got, want)
	}
	if got := os.Getenv("GOPJRT_CUDA_CHECKS"); got != "0" {
		t.Errorf("GOPJRT_CUDA_CHECKS = %q, want 0", got)
	}
	if os.Getenv(NoAutoInstallEnv) == "" {
		t.Errorf("%s not set", NoAutoInstallEnv)
	}
	// A data dir the user set is kept.
	t.Setenv("XLA_FLAGS", "--xla_gpu_cuda_data_dir=/usr/local/cuda")
	PrepareProcessEnv(&c)
	if got := os.Getenv("XLA_FLAGS"); got != "--xla_gpu_cuda_data_dir=/usr/local/cuda" {
		t.Errorf("XLA_FLAGS = %q, want the user's value kept", got)
	}
}

func TestNewGoAndSelfCheck(t *testing.T) {
	m := newFakeMachine(t)
	b, ch, err := m.env().New("go")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Finalize()
	if b.Name() == BackendXLA || ch.Backend != BackendGo {
		t.Fatalf("New(go) = %s, %v", b.Name(), ch)
	}
	// The pure-Go backend computes in float32 without TF32: the error is float32 rounding.
	relErr, err := SelfCheck(b)
	if err != nil {
		t.Fatal(err)
	}
	if relErr > 1e-5 {
		t.Errorf("SelfCheck relative error %.3g on the pure-Go backend, want <= 1e-5", relErr)
	}
	d := Describe(b)
	if d.Backend != b.Name() || len(d.Devices) != 1 || d.CPUCores != runtime.NumCPU() || len(d.GPUs) != 0 {
		t.Errorf("Describe = %+v", d)
	}
	if s := d.String(); !strings.Contains(s, "logical cores") {
		t.Errorf("Describe().String() = %q", s)
	}
}

// TestNewForDecoding checks that the plain pure-Go choice gets the decoding configuration (and
// still computes correctly), and that an explicit configuration is kept as given.
func TestNewForDecoding(t *testing.T) {
	m := newFakeMachine(t)
	b, ch, err := m.env().NewForDecoding("go")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Finalize()
	if ch.Backend != BackendGo || ch.Config != CPUDecodingConfig || !strings.Contains(ch.Reason, "decoding") {
		t.Errorf("NewForDecoding(go) = %+v", ch)
	}
	if relErr, err := SelfCheck(b); err != nil || relErr > 1e-5 {
		t.Errorf("SelfCheck with %s: relative error %.3g, %v", ch.Config, relErr, err)
	}
	if !IsPureGo(b) || IsPureGo(nil) {
		t.Errorf("IsPureGo(%s) = %v, IsPureGo(nil) = %v", b.Name(), IsPureGo(b), IsPureGo(nil))
	}
	if IsCUDA(b) || IsCUDA(nil) {
		t.Errorf("IsCUDA(%s) = %v, IsCUDA(nil) = %v; want false", b.Name(), IsCUDA(b), IsCUDA(nil))
	}
	b2, ch2, err := m.env().NewForDecoding("go:ops_sequential")
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Finalize()
	if ch2.Config != "go:ops_sequential" {
		t.Errorf("NewForDecoding(go:ops_sequential) config %q, want it kept", ch2.Config)
	}
}

// A plugin that exists but cannot be loaded (here an empty file): an explicit request fails
// naming the file; the automatic choice falls back to the CPU and says why.
func TestNewBrokenPlugin(t *testing.T) {
	t.Setenv("XLA_FLAGS", "")
	t.Setenv("GOPJRT_CUDA_CHECKS", "0")
	m := newFakeMachine(t)
	m.touch(device)
	p := m.touch(optCUDA13)

	_, _, err := m.env().New("xla:" + p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("New(xla:%s) error = %v, want an error naming the plugin", p, err)
	}
	_, _, err = m.env().New("cuda")
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"cuda" (from -backend)`) {
		t.Fatalf("New(cuda) error = %v, want an error naming the request and the plugin", err)
	}

	b, ch, err := m.env().New("")
	if err != nil {
		t.Fatalf("automatic New: %v", err)
	}
	defer b.Finalize()
	if b.Name() == BackendXLA || ch.Backend != BackendGo || !strings.Contains(ch.Reason, p) {
		t.Errorf("automatic New = %s, %v; want the go backend and a reason naming %s", b.Name(), ch, p)
	}
}

func TestParseNvidiaSMI(t *testing.T) {
	gpus, err := parseNvidiaSMI("0, NVIDIA H200, 143771, 512, 580.95.05\n1, NVIDIA H200, 143771, 0, 580.95.05\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 2 || gpus[0].Name != "NVIDIA H200" || gpus[0].MemoryTotal != 143771<<20 ||
		gpus[0].MemoryUsed != 512<<20 || gpus[1].Index != 1 || gpus[1].Driver != "580.95.05" {
		t.Errorf("parseNvidiaSMI = %+v", gpus)
	}
	if _, err := parseNvidiaSMI("0, NVIDIA H200, lots, 0, 580\n"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad memory field: error = %v, want one naming line 1", err)
	}
}

func TestGPUMemoryEnv(t *testing.T) {
	m := newFakeMachine(t)
	p := m.touch(optCUDA13)
	t.Setenv(GPUMemoryEnv, "lots")
	_, _, err := m.env().New("xla:" + p)
	if err == nil || !strings.Contains(err.Error(), GPUMemoryEnv) {
		t.Errorf("New with %s=lots: error = %v, want one naming %s", GPUMemoryEnv, err, GPUMemoryEnv)
	}
	for _, tc := range []struct {
		v    string
		want bool
	}{{"", false}, {"grow", true}} {
		t.Setenv(GPUMemoryEnv, tc.v)
		if got := MemoryIsHighWater(); got != tc.want {
			t.Errorf("MemoryIsHighWater() with %s=%q = %v, want %v", GPUMemoryEnv, tc.v, got, tc.want)
		}
	}
}

func TestVisibleGPUs(t *testing.T) {
	gpus := []GPU{{Index: 0, MemoryUsed: 10}, {Index: 1, MemoryUsed: 11}, {Index: 2, MemoryUsed: 12}}
	for _, tc := range []struct {
		visible string
		want    []int64
	}{
		{"", []int64{10, 11, 12}},
		{"1", []int64{11}},
		{"2,0", []int64{12, 10}},
		{" 1 , 2 ", []int64{11, 12}},
		{"GPU-1234", []int64{10, 11, 12}},
		{"1,-1,2", []int64{11}},
		{"7", nil},
	} {
		var got []int64
		for _, g := range visibleGPUs(gpus, tc.visible) {
			got = append(got, g.MemoryUsed)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("visibleGPUs(%q) = %v, want %v", tc.visible, got, tc.want)
		}
	}
}
