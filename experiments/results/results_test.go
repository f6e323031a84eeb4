package results

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadTrainLog(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text, err string
		n               int
	}{
		{"ok", `{"step":1,"loss":3,"flops":10}` + "\n\n" + `{"step":2,"loss":2.5,"flops":20,"held_out":{"code":2.7}}` + "\n", "", 2},
		{"malformed", `{"step":1}` + "\n" + `{"step":2,` + "\n", ":2: malformed training record", 0},
		{"order", `{"step":2}` + "\n" + `{"step":2}` + "\n", ":2: step 2 does not follow step 2", 0},
	} {
		p := filepath.Join(dir, tc.name+".jsonl")
		os.WriteFile(p, []byte(tc.text), 0o644)
		recs, err := ReadTrainLog(p)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), p+tc.err) {
				t.Errorf("%s: got %v, want an error containing %q", tc.name, err, p+tc.err)
			}
			continue
		}
		if err != nil || len(recs) != tc.n || recs[1].HeldOut["code"] != 2.7 {
			t.Errorf("%s: got %v, %v", tc.name, recs, err)
		}
	}
}

func TestBalanceAndThresholds(t *testing.T) {
	// counts 2, 4, 6: mean 4, population std sqrt(8/3).
	if cv, want := CoefficientOfVariation([]float64{2, 4, 6}), math.Sqrt(8.0/3)/4; math.Abs(cv-want) > 1e-15 {
		t.Errorf("CV = %g, want %g", cv, want)
	}
	if cv := CoefficientOfVariation([]float64{5, 5, 5, 5}); cv != 0 {
		t.Errorf("CV of balanced counts = %g, want 0", cv)
	}
	if !math.IsNaN(CoefficientOfVariation(nil)) || !math.IsNaN(CoefficientOfVariation([]float64{0, 0})) {
		t.Errorf("CV of empty / zero counts should be NaN")
	}
	recs := []TrainRecord{
		{Step: 1, FLOPs: 1e9, Loss: 4},
		{Step: 2, FLOPs: 2e9, Loss: 3.1, HeldOut: map[string]float64{"prose": 3.4}},
		{Step: 3, FLOPs: 3e9, Loss: 2.9},
		{Step: 4, FLOPs: 4e9, Loss: 2.8, HeldOut: map[string]float64{"prose": 2.95, "code": 2}},
	}
	for _, tc := range []struct {
		thr    float64
		domain string
		flops  float64
		ok     bool
	}{
		{3.0, "", 3e9, true}, {3.0, "prose", 4e9, true}, {2.5, "", 0, false}, {5, "code", 4e9, true},
	} {
		f, ok := FLOPsToReach(recs, tc.thr, tc.domain)
		if f != tc.flops || ok != tc.ok {
			t.Errorf("FLOPsToReach(%g, %q) = %g, %v; want %g, %v", tc.thr, tc.domain, f, ok, tc.flops, tc.ok)
		}
	}
	if d := Domains(recs); len(d) != 2 || d[0] != "code" || d[1] != "prose" {
		t.Errorf("Domains = %v", d)
	}
}

// TestReadParts checks that the listed files are read in order with spaces trimmed, and that a
// failing read stops with its error.
func TestReadParts(t *testing.T) {
	var seen []string
	read := func(path string) (string, error) {
		if path == "bad" {
			return "", fmt.Errorf("reading %s: no such file", path)
		}
		seen = append(seen, path)
		return "<" + path + ">", nil
	}
	parts, err := ReadParts("a.json, b.json ,c.json", read)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(parts, "") != "<a.json><b.json><c.json>" || len(seen) != 3 {
		t.Errorf("parts %q (read %q), want a.json, b.json, c.json in order", parts, seen)
	}
	if _, err := ReadParts("a.json,bad,c.json", read); err == nil || !strings.Contains(err.Error(), "reading bad") {
		t.Errorf("error %v, want the failing read's", err)
	}
}
