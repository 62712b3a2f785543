// SPDX-License-Identifier: MIT

package exporter

import (
	"os/exec"
	"strings"
	"testing"
)

// The exporter works on telemetry values only: it must build without the
// data plane (cilium/ebpf, netlink) and without the balancer, so that what
// it exports is tested without BPF and its types have one home.
func TestExporterDoesNotImportDataPlane(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/icmplb/icmplb/exporter").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/icmplb/icmplb/bpf", "github.com/icmplb/icmplb/balancer"} {
			if dep == bad || strings.HasPrefix(dep, bad+"/") {
				t.Errorf("exporter depends on %s", dep)
			}
		}
	}
}
