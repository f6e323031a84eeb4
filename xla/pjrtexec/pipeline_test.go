package pjrtexec

import (
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
)

// TestStartRefuses: what Start cannot run is an error that names it. (The pipeline itself needs
// the XLA backend on a device; bm's TestResidentPipeline runs it there.)
func TestStartRefuses(t *testing.T) {
	if _, err := Start(nil, nil, 1, 0); err == nil || !strings.Contains(err.Error(), "depth 0") {
		t.Errorf("depth 0: error %v, want one naming the depth", err)
	}
	var notXLA backends.Executable
	if _, err := Start(notXLA, nil, 1, 2); err == nil || !strings.Contains(err.Error(), "not of GoMLX's XLA backend") {
		t.Errorf("a nil executable: error %v, want one saying it is not the XLA backend's", err)
	}
}
