// SPDX-License-Identifier: MIT

// Package agenttest runs the real icmplb binary, and other long-running
// programs, as child processes of end-to-end tests: it finds or builds the
// binary, gives it an environment the caller's settings cannot leak into,
// collects its output and stops it when the test ends.
package agenttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// Main runs a package's tests and removes the binary Binary built, if any:
// call it from TestMain.
func Main(m interface{ Run() int }) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Binary returns the icmplb binary under test: $ICMPLB_BIN (what `make test`
// built, with its ldflags) or one built once per test process, so that a
// plain go test never runs a stale bin/icmplb. The build lands in a
// world-readable directory, so that tests can run it as an unprivileged user.
func Binary(tb testenv.TB) string {
	tb.Helper()
	if p := os.Getenv("ICMPLB_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			tb.Fatalf("ICMPLB_BIN: %v", err)
		}
		return p
	}
	buildOnce.Do(func() {
		var err error
		buildDir, err = os.MkdirTemp("", "icmplb-test-")
		if err == nil {
			err = os.Chmod(buildDir, 0o755)
		}
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "icmplb")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/icmplb/icmplb/cmd/icmplb").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		buildBin = bin
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildBin
}

// Env is the test process's environment without the ICMPLB_* and OTEL_*
// settings the agent would read, plus extra.
func Env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ICMPLB_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StopTimeout is how long Stop waits after SIGTERM before killing.
const StopTimeout = 5 * time.Second

// Proc is a long-running child process of a test.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	log  lockedBuffer
	done chan struct{}
	err  error
	// mayFail is set by a test that makes the process exit with an error.
	mayFail atomic.Bool
}

// ExpectFailure tells the cleanup not to report the process's exit error:
// the test provokes it and checks it.
func (p *Proc) ExpectFailure() { p.mayFail.Store(true) }

// Start starts cmd with env and stops it when the test ends, showing its
// output if the test failed.
func Start(tb testenv.TB, name string, cmd *exec.Cmd, env []string) *Proc {
	tb.Helper()
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		if _, err := p.Stop(); err != nil && !p.mayFail.Load() {
			tb.Errorf("%s: %v", name, err)
		}
		if tb.Failed() {
			tb.Logf("%s %q output:\n%s", name, cmd.Args, p.Log())
		}
	})
	return p
}

// Log is what the process wrote to stdout and stderr so far.
func (p *Proc) Log() string { return p.log.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error, once Done is closed.
func (p *Proc) Err() error { return p.err }

// Stop sends SIGTERM and waits for the exit, killing the process if it does
// not go within StopTimeout. It returns how long the exit took and the exit
// error; stopping an exited process returns its exit error again. Under ip
// netns exec the pid is the program's own: ip execs it in place.
func (p *Proc) Stop() (time.Duration, error) {
	select {
	case <-p.done:
		return 0, p.err
	default:
	}
	start := time.Now()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		<-p.done
		return time.Since(start), p.err
	}
	select {
	case <-p.done:
		return time.Since(start), p.err
	case <-time.After(StopTimeout):
		p.Cmd.Process.Kill()
		<-p.done
		return time.Since(start), fmt.Errorf("still running %v after SIGTERM; killed", StopTimeout)
	}
}

// WaitLog waits until the process logged text, failing the test if it exits
// or the timeout passes first.
func (p *Proc) WaitLog(tb testenv.TB, text string, timeout time.Duration) {
	tb.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(p.Log(), text) {
		select {
		case <-p.done:
			tb.Fatalf("%s exited (%v) before logging %q", p.Name, p.err, text)
		case <-deadline:
			tb.Fatalf("%s did not log %q within %v", p.Name, text, timeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AttachTimeout bounds an agent's start, from exec to msg=attached.
const AttachTimeout = 5 * time.Second

// StartAgent runs icmplb with args in the topology's balancer namespace, in
// Env(env...), and waits until it has attached.
func StartAgent(tb testenv.TB, topo *topology.Topology, env []string, args ...string) *Proc {
	tb.Helper()
	p := Start(tb, "icmplb", topo.Command(topology.SeedBalancer, Binary(tb), args...), Env(env...))
	p.WaitLog(tb, "msg=attached", AttachTimeout)
	return p
}
