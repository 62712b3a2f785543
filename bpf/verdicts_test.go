// SPDX-License-Identifier: MIT

package bpf_test

import (
	"testing"

	"github.com/icmplb/icmplb/balancer"
	"github.com/icmplb/icmplb/bpf"
)

// TestVerdictNames checks that the agent exports every reason of the data
// plane under the name and verdict the packet tests hold it to: a reason
// missing there would count packets nobody sees.
func TestVerdictNames(t *testing.T) {
	if n := len(balancer.Verdicts); n != int(bpf.IcmplbReasonREASON_MAX) {
		t.Errorf("balancer.Verdicts has %d entries, enum reason %d", n, bpf.IcmplbReasonREASON_MAX)
	}
	seen := map[string]bpf.IcmplbReason{}
	for r := range bpf.IcmplbReasonREASON_MAX {
		verdict, name := bpf.ReasonVerdict(r)
		if name == "" || verdict == "" {
			t.Errorf("reason %d has no entry in the tests' reasonTable", r)
			continue
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("reasons %d and %d share the name %q", prev, r, name)
		}
		seen[name] = r
		if int(r) >= len(balancer.Verdicts) {
			continue
		}
		if got := balancer.Verdicts[r]; got.Reason != name || got.Verdict != verdict {
			t.Errorf("balancer.Verdicts[%d] = {%q, %q}, want {%q, %q}", r, got.Verdict, got.Reason, verdict, name)
		}
	}
}
