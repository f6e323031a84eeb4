package xla

import "os"

// DeviceMemoryUsed returns the memory in use on the first NVIDIA GPU, in bytes, as nvidia-smi
// reports it, or -1 when unknown. With BLACKMAMBA_GPU_MEMORY=grow (see GPUMemoryEnv) this is
// the process's high-water mark of device memory since it started; without it, XLA's initial
// reservation.
func DeviceMemoryUsed() int64 {
	gpus, _ := nvidiaSMI()
	if len(gpus) == 0 {
		return -1
	}
	return gpus[0].MemoryUsed
}

// MemoryIsHighWater reports whether DeviceMemoryUsed measures the high-water mark (the growing
// allocator is on).
func MemoryIsHighWater() bool { return os.Getenv(GPUMemoryEnv) == "grow" }

// DevicesMemoryUsed returns the memory in use on each NVIDIA GPU, in bytes, in nvidia-smi's
// index order (GPU i of the machine at position i), or nil when unknown. With
// BLACKMAMBA_GPU_MEMORY=grow each entry is the high-water mark on that GPU, as for
// DeviceMemoryUsed, which is its first entry.
func DevicesMemoryUsed() []int64 {
	gpus, _ := nvidiaSMI()
	if len(gpus) == 0 {
		return nil
	}
	used := make([]int64, len(gpus))
	for i, g := range gpus {
		used[i] = g.MemoryUsed
	}
	return used
}
