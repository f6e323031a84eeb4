//go:build !linux || !cgo

package kerneltrace

func start(lib string) (*Tracer, error) { return nil, ErrUnsupported }

func (t *Tracer) now() (uint64, error) { return 0, ErrUnsupported }

func (t *Tracer) collect() ([]Kernel, uint64, error) { return nil, 0, ErrUnsupported }

func (t *Tracer) stop() error { return ErrUnsupported }
