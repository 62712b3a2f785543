// SPDX-License-Identifier: MIT

package telemetry

import (
	"math"
	"os/exec"
	"strings"
	"testing"
)

func TestHistogramLayout(t *testing.T) {
	h := Histogram{Schema: 3, Offset: 160, Buckets: make([]uint64, 256)}
	if got := h.ZeroThreshold(); got != math.Exp2(-20) {
		t.Errorf("zero threshold %g, want 2^-20", got)
	}
	for k, want := range map[int]float64{160: 1, 168: 2, 152: 0.5, 164: math.Sqrt2} {
		if got := h.UpperBound(k); math.Abs(got-want) > 1e-12 {
			t.Errorf("UpperBound(%d) = %g, want %g", k, got, want)
		}
	}
	h.Buckets[0], h.Buckets[200] = 2, 3
	if h.Count() != 5 {
		t.Errorf("Count %d, want 5", h.Count())
	}
}

// The package is the contract between the balancer and the exporter: it
// imports neither, nor anything outside the standard library.
func TestStandardLibraryOnly(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list dependencies")
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/icmplb/icmplb/exporter/telemetry").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if dep != "github.com/icmplb/icmplb/exporter/telemetry" {
			t.Errorf("telemetry depends on %s", dep)
		}
	}
}
