// SPDX-License-Identifier: MIT

// Package testenv decides whether privileged tests (BPF, network namespaces)
// can run: they skip with a reason when not root, except where the
// environment demands them (CI sets ICMPLB_REQUIRE_PRIVILEGED through
// `make test`), where a skip would hide a failure and fails instead.
package testenv

import (
	"os"
	"os/exec"
)

// TB is what the test kit needs of a test: *testing.T and *testing.B have
// it. The kit takes this interface, not *testing.T, so that its packages
// (which the demo also uses) do not link the testing package.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	Logf(format string, args ...any)
	Skip(args ...any)
	Skipf(format string, args ...any)
}

// Privileged skips or fails tb unless the process is root and has what
// privileged tests use (the ip command).
func Privileged(tb TB) {
	tb.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root (CAP_BPF, CAP_NET_ADMIN): loads XDP programs and creates network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "needs the ip command (Debian package iproute2)"
	}
	if reason == "" {
		return
	}
	if os.Getenv("ICMPLB_REQUIRE_PRIVILEGED") != "" {
		tb.Fatalf("%s, and ICMPLB_REQUIRE_PRIVILEGED is set", reason)
	}
	tb.Skip(reason)
}

// Tool returns the path of a command a test needs, skipping the test without
// it, or failing it where the environment demands privileged tests (CI):
// there the command must have been installed. pkg names its Debian package.
func Tool(tb TB, name, pkg string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("ICMPLB_REQUIRE_PRIVILEGED") != "" {
		tb.Fatalf("needs %s (Debian package %s; make deps installs it), and ICMPLB_REQUIRE_PRIVILEGED is set", name, pkg)
	}
	tb.Skipf("needs %s (Debian package %s)", name, pkg)
	return ""
}
