// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedUpToDate recompiles the C with the toolchain the Makefile sets
// and fails when the committed bpf2go output differs from it: the committed
// objects are what `go build` embeds, so they must match the source.
func TestGeneratedUpToDate(t *testing.T) {
	cc := os.Getenv("BPF2GO_CC")
	if cc == "" {
		t.Skip("BPF2GO_CC unset: run `make test`, which sets the BPF toolchain, to check the generated objects")
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Fatalf("BPF2GO_CC=%s is not installed (make deps installs it): %v", cc, err)
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var runs [][]string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			runs = append(runs, strings.Fields(rest))
		}
	}
	if runs == nil {
		t.Fatal("no //go:generate go tool bpf2go line in gen.go")
	}
	for _, args := range runs {
		out := t.TempDir()
		cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-go-package", "bpf", "-output-dir", out}, args...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bpf2go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		generated, err := os.ReadDir(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range generated {
			want, err := os.ReadFile(filepath.Join(out, f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("bpf/%s is stale: it differs from what the C compiles to; run `make generate` and commit the result", f.Name())
			}
		}
	}
}
