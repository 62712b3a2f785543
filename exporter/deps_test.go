// SPDX-License-Identifier: MIT

package exporter

import (
	"os/exec"
	"strings"
	"testing"
)

// The exporter works on telemetry values only: it must build, and its tests
// run, without the data plane (cilium/ebpf, netlink) and without the
// balancer, so that what it exports is tested without BPF and the types it
// consumes have one home (package telemetry).
func TestExporterDoesNotImportDataPlane(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list dependencies")
	}
	out, err := exec.Command("go", "list", "-deps", "-test", "-f", "{{.ImportPath}}", "github.com/icmplb/icmplb/exporter/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		dep, _, _ := strings.Cut(strings.TrimSpace(line), " ") // "pkg [pkg.test]"
		for _, bad := range []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/icmplb/icmplb/bpf", "github.com/icmplb/icmplb/balancer"} {
			if dep == bad || strings.HasPrefix(dep, bad+"/") {
				t.Errorf("exporter depends on %s", dep)
			}
		}
	}
}
