package xla

import (
	"os"
	"strconv"
	"strings"
)

// DeviceMemoryUsed returns the memory in use on the first NVIDIA GPU this process sees (the
// first entry of CUDA_VISIBLE_DEVICES when it is set), in bytes, as nvidia-smi
// reports it, or -1 when unknown. With BLACKMAMBA_GPU_MEMORY=grow (see GPUMemoryEnv) this is
// the process's high-water mark of device memory since it started; without it, XLA's initial
// reservation.
func DeviceMemoryUsed() int64 {
	if used := DevicesMemoryUsed(); len(used) > 0 {
		return used[0]
	}
	return -1
}

// DeviceMemoryTotal returns the memory of the first NVIDIA GPU this process sees (as
// DeviceMemoryUsed), in bytes, or -1 when unknown.
func DeviceMemoryTotal() int64 {
	gpus := processGPUs()
	if len(gpus) == 0 {
		return -1
	}
	return gpus[0].MemoryTotal
}

// MemoryIsHighWater reports whether DeviceMemoryUsed measures the high-water mark (the growing
// allocator is on).
func MemoryIsHighWater() bool { return os.Getenv(GPUMemoryEnv) == "grow" }

// DevicesMemoryUsed returns the memory in use on each NVIDIA GPU this process sees, in bytes,
// in the order the process numbers them (nvidia-smi's index order, or the order of
// CUDA_VISIBLE_DEVICES when it is set), or nil when unknown. With
// BLACKMAMBA_GPU_MEMORY=grow each entry is the high-water mark on that GPU, as for
// DeviceMemoryUsed, which is its first entry.
func DevicesMemoryUsed() []int64 {
	gpus := processGPUs()
	if len(gpus) == 0 {
		return nil
	}
	used := make([]int64, len(gpus))
	for i, g := range gpus {
		used[i] = g.MemoryUsed
	}
	return used
}

// processGPUs returns the NVIDIA GPUs this process sees, as nvidia-smi reports them, in the
// process's order (visibleGPUs), or nil when unknown.
func processGPUs() []GPU {
	gpus, _ := nvidiaSMI()
	return visibleGPUs(gpus, os.Getenv("CUDA_VISIBLE_DEVICES"))
}

// visibleGPUs returns the GPUs named by a CUDA_VISIBLE_DEVICES value (comma-separated indices,
// in that order), or all of them when the value is empty or not a list of indices (e.g. UUIDs).
func visibleGPUs(gpus []GPU, visible string) []GPU {
	visible = strings.TrimSpace(visible)
	if visible == "" {
		return gpus
	}
	var out []GPU
	for _, f := range strings.Split(visible, ",") {
		idx, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return gpus
		}
		if idx < 0 {
			break // CUDA stops at the first invalid entry
		}
		for _, g := range gpus {
			if g.Index == idx {
				out = append(out, g)
			}
		}
	}
	return out
}
