// SPDX-License-Identifier: MIT

package testenv

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The kit's packages take TB so that they need not import testing; this
// keeps the real test types usable with them.
var (
	_ TB = (*testing.T)(nil)
	_ TB = (*testing.B)(nil)
)

// linksTesting lists the packages outside this module that import testing
// from non-test code and that a package of ours cannot avoid, each with the
// reason. An entry must stay true: one that no longer imports testing, or is
// no longer linked, fails the test so the exception does not outlive it.
var linksTesting = map[string]string{
	// prometheus/common's expfmt parses OpenMetrics with go-abnf, whose
	// generate_fuzz.go (not a _test.go file) holds a fuzz target. Both the
	// product (through client_golang) and the demo (which parses scrapes)
	// need expfmt.
	"github.com/pandatix/go-abnf": "imported by github.com/prometheus/common/expfmt",
}

// No package of this module, the product and the demo included, links the
// testing package outside its tests, save through linksTesting: the test
// kit under internal/ takes TB, not *testing.T, so the programs that use
// the kit do not carry test code. go list -deps sees what a binary links,
// including what our packages reach through each other and through
// third-party modules.
func TestNoTestingInNonTestCode(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go tool")
	}
	const module = "github.com/icmplb/icmplb"
	cmd := exec.Command("go", "list", "-deps", "-f",
		"{{.ImportPath}}\t{{if .Module}}{{.Module.Path}}{{end}}\t{{join .Imports \" \"}}", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s/...: %v\n%s", module, err, stderr.Bytes())
	}

	imports := map[string][]string{}
	var ours []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		imports[f[0]] = strings.Fields(f[2])
		if f[1] == module {
			ours = append(ours, f[0])
		}
	}
	// A wrong pattern or a renamed command must not make the test pass
	// by checking nothing.
	for _, want := range []string{"cmd/icmplb", "cmd/icmplb-demo", "cmd/icmplb-responder", "cmd/icmplb-seedtopo", "internal/topology", "internal/agenttest"} {
		if !slices.Contains(ours, module+"/"+want) {
			t.Errorf("go list -deps %s/... does not list %s", module, want)
		}
	}

	for pkg, why := range linksTesting {
		if !slices.Contains(imports[pkg], "testing") {
			t.Errorf("%s (%s) no longer links testing: remove it from linksTesting", pkg, why)
		}
	}

	// The first path found from each of our packages to testing, not
	// counting the excepted edges.
	for _, root := range ours {
		if path := pathTo(root, "testing", imports); path != nil {
			t.Errorf("%s links testing in non-test code: %s", root, strings.Join(path, " → "))
		}
	}
}

// pathTo returns an import path from root to target, or nil, skipping the
// edges into testing that linksTesting excepts.
func pathTo(root, target string, imports map[string][]string) []string {
	seen := map[string]bool{}
	var walk func(pkg string) []string
	walk = func(pkg string) []string {
		if pkg == target {
			return []string{pkg}
		}
		if seen[pkg] {
			return nil
		}
		seen[pkg] = true
		for _, imp := range imports[pkg] {
			if imp == "testing" && linksTesting[pkg] != "" {
				continue
			}
			if rest := walk(imp); rest != nil {
				return append([]string{pkg}, rest...)
			}
		}
		return nil
	}
	return walk(root)
}

func TestPathTo(t *testing.T) {
	g := map[string][]string{
		"a":                           {"b", "c"},
		"b":                           {"fmt"},
		"c":                           {"d"},
		"d":                           {"testing"},
		"e":                           {"github.com/pandatix/go-abnf"},
		"github.com/pandatix/go-abnf": {"fmt", "testing"},
	}
	if got, want := pathTo("a", "testing", g), []string{"a", "c", "d", "testing"}; !slices.Equal(got, want) {
		t.Errorf("pathTo(a) = %v, want %v", got, want)
	}
	if got := pathTo("b", "testing", g); got != nil {
		t.Errorf("pathTo(b) = %v, want nil", got)
	}
	if got := pathTo("e", "testing", g); got != nil {
		t.Errorf("pathTo(e) = %v, want nil: the go-abnf edge is excepted", got)
	}
}
