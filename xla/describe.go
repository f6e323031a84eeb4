package xla

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best dot-imported
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// GPU is one NVIDIA GPU as reported by nvidia-smi.
type GPU struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	MemoryTotal int64  `json:"memory_total"` // bytes
	MemoryUsed  int64  `json:"memory_used"`  // bytes, at the time of Describe (XLA reserves most of the memory when a client starts)
	Driver      string `json:"driver"`
}

// Description says what a backend runs on.
type Description struct {
	Backend string   `json:"backend"` // the backend's Name()
	Summary string   `json:"summary"` // the backend's own one-line description (plugin path and version for XLA)
	Devices []string `json:"devices"` // the backend's description of each device it drives
	// GPUs lists the NVIDIA GPUs (from nvidia-smi) when the backend is XLA on a CUDA plugin
	// and nvidia-smi is installed; GPUNote says why the list is empty otherwise.
	GPUs    []GPU  `json:"gpus,omitempty"`
	GPUNote string `json:"gpu_note,omitempty"`
	// The host: CPU model, logical cores, GOMAXPROCS and memory (bytes; 0 if unknown).
	CPUModel   string `json:"cpu_model"`
	CPUCores   int    `json:"cpu_cores"`
	GoMaxProcs int    `json:"gomaxprocs"`
	HostMemory int64  `json:"host_memory"`
}

// Describe reports the devices of a backend: for XLA the PJRT devices plus the NVIDIA GPUs'
// names and memory when nvidia-smi is available; always the host CPU and memory.
func Describe(b backends.Backend) Description {
	d := Description{
		Backend:    b.Name(),
		Summary:    b.Description(),
		CPUModel:   cpuModel(),
		CPUCores:   runtime.NumCPU(),
		GoMaxProcs: runtime.GOMAXPROCS(0),
		HostMemory: hostMemory(),
	}
	for i := range b.NumDevices() {
		d.Devices = append(d.Devices, b.DeviceDescription(backends.DeviceNum(i)))
	}
	if IsCUDA(b) {
		d.GPUs, d.GPUNote = nvidiaSMI()
	}
	return d
}

// String formats the description as indented lines.
func (d Description) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "backend   %s\n", d.Summary)
	for i, dev := range d.Devices {
		fmt.Fprintf(&sb, "device %d  %s\n", i, dev)
	}
	for _, g := range d.GPUs {
		fmt.Fprintf(&sb, "gpu %d     %s, %s total, %s in use, driver %s\n", g.Index, g.Name,
			formatBytes(g.MemoryTotal), formatBytes(g.MemoryUsed), g.Driver)
	}
	if d.GPUNote != "" {
		fmt.Fprintf(&sb, "gpus      %s\n", d.GPUNote)
	}
	fmt.Fprintf(&sb, "host      %s, %d logical cores (GOMAXPROCS %d), %s memory\n",
		orUnknown(d.CPUModel), d.CPUCores, d.GoMaxProcs, formatBytes(d.HostMemory))
	return sb.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown CPU"
	}
	return s
}

func formatBytes(n int64) string {
	if n <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// nvidiaSMI queries the GPUs through nvidia-smi, with a timeout.
func nvidiaSMI() ([]GPU, string) {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return nil, "nvidia-smi not found: GPU names and memory unknown"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--query-gpu=index,name,memory.total,memory.used,driver_version",
		"--format=csv,noheader,nounits").Output()
	if err != nil {
		return nil, fmt.Sprintf("nvidia-smi failed: %v", err)
	}
	gpus, err := parseNvidiaSMI(string(out))
	if err != nil {
		return nil, err.Error()
	}
	return gpus, ""
}

// parseNvidiaSMI reads the CSV nvidia-smi prints for
// --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv,noheader,nounits
// (memory in MiB).
func parseNvidiaSMI(out string) ([]GPU, error) {
	var gpus []GPU
	for n, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 5 {
			return nil, fmt.Errorf("nvidia-smi output line %d: want 5 comma-separated fields, got %d in %q", n+1, len(f), line)
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		idx, err1 := strconv.Atoi(f[0])
		total, err2 := strconv.ParseInt(f[2], 10, 64)
		used, err3 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("nvidia-smi output line %d: bad index or memory in %q", n+1, line)
		}
		gpus = append(gpus, GPU{Index: idx, Name: f[1], MemoryTotal: total << 20, MemoryUsed: used << 20, Driver: f[4]})
	}
	return gpus, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// HostMemory returns the machine's memory in bytes (MemTotal of /proc/meminfo), 0 when unknown.
func HostMemory() int64 { return hostMemory() }

func hostMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// SelfCheckTolerance is the largest relative error SelfCheck accepts. It allows for TF32
// matrix multiplication (10-bit mantissa), which XLA uses for float32 on recent NVIDIA GPUs.
const SelfCheckTolerance = 5e-3

// SelfCheck compiles and runs a small graph on b, out[i] = Σ_j tanh((x·w)[i,j]) + exp(mean_k x[i,k])
// with x: [64, 32] and w: [32, 48] float32, and compares it with a float64 computation in Go.
// It returns the largest error relative to max(1, |reference|); err is set when the graph fails
// to compile or run, or when that error exceeds SelfCheckTolerance. On a GPU this proves that
// the plugin compiles kernels (which needs CUDA's libdevice and ptxas), not just that it loads.
func SelfCheck(b backends.Backend) (maxRelErr float64, err error) {
	const m, k, n = 64, 32, 48
	x := make([]float32, m*k)
	w := make([]float32, k*n)
	for i := range x {
		x[i] = float32(math.Sin(0.37*float64(i)+0.1)) * 0.8
	}
	for i := range w {
		w[i] = float32(math.Cos(0.23*float64(i)+0.3)) * 0.3
	}
	want := make([]float64, m)
	for i := range m {
		mean := 0.0
		for kk := range k {
			mean += float64(x[i*k+kk])
		}
		mean /= k
		s := math.Exp(mean)
		for j := range n {
			dot := 0.0
			for kk := range k {
				dot += float64(x[i*k+kk]) * float64(w[kk*n+j])
			}
			s += math.Tanh(dot)
		}
		want[i] = s
	}

	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("self-check on backend %s failed: %v", b.Name(), r)
		}
	}()
	ex, err := NewExec(b, func(x, w *Node) *Node {
		return Add(ReduceSum(Tanh(MatMul(x, w)), 1), Exp(ReduceMean(x, 1)))
	})
	if err != nil {
		return 0, fmt.Errorf("self-check on backend %s: %w", b.Name(), err)
	}
	defer ex.Finalize()
	outs, err := ex.Exec(tensors.FromFlatDataAndDimensions(x, m, k), tensors.FromFlatDataAndDimensions(w, k, n))
	if err != nil {
		return 0, fmt.Errorf("self-check on backend %s: %w", b.Name(), err)
	}
	got, err := tensors.CopyFlatData[float32](outs[0])
	if err != nil {
		return 0, fmt.Errorf("self-check on backend %s: reading the result: %w", b.Name(), err)
	}
	if len(got) != m {
		return 0, fmt.Errorf("self-check on backend %s: got %d outputs, want %d", b.Name(), len(got), m)
	}
	for i := range m {
		e := math.Abs(float64(got[i])-want[i]) / math.Max(1, math.Abs(want[i]))
		if math.IsNaN(e) {
			e = math.Inf(1)
		}
		maxRelErr = math.Max(maxRelErr, e)
	}
	if maxRelErr > SelfCheckTolerance {
		return maxRelErr, fmt.Errorf("self-check on backend %s: relative error %.3g exceeds %.3g", b.Name(), maxRelErr, SelfCheckTolerance)
	}
	return maxRelErr, nil
}
