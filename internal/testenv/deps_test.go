// SPDX-License-Identifier: MIT

package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// No package of this module imports testing outside its tests: the test
// kit takes TB, so the demo and the product, which use parts of the kit
// and of each other, do not link test code of ours. (client_golang's
// expfmt links testing through a dependency of its own; that is not ours
// to remove.)
func TestNoTestingInNonTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "github.com/icmplb/icmplb/...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	n := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		n++
		for _, imp := range fields[1:] {
			if imp == "testing" {
				t.Errorf("%s imports testing in non-test code", fields[0])
			}
		}
	}
	if n < 15 {
		t.Errorf("go list found %d packages; the pattern is wrong", n)
	}
}
