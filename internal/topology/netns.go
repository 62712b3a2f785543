// SPDX-License-Identifier: MIT

package topology

import (
	"fmt"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNS runs fn on an OS thread switched into the host's network namespace
// and switches the thread back afterwards. Sockets, netlink handles and BPF
// links created by fn stay bound to that namespace after it returns, which
// is how a test process attaches XDP programs to a host's eth0.
//
// fn runs on its own goroutine, locked to its thread; goroutines it starts
// run in the original namespace, and it must not call t.FailNow (t.Fatal)
// but return an error instead. A panic in fn is re-raised in the caller.
func (t *Topology) InNS(host string, fn func() error) error {
	h := t.Hosts[host]
	if h == nil {
		return fmt.Errorf("topology %s: no host %q", t.Prefix, host)
	}
	return InNetNS(h.NS, fn)
}

// InSwitch is InNS for the switch namespace, where the bridge ports live.
func (t *Topology) InSwitch(fn func() error) error {
	return InNetNS(t.SwitchNS, fn)
}

// InNetNS runs fn on an OS thread switched into the named network namespace
// (one of `ip netns list`), and switches the thread back; for namespaces
// made outside a Topology.
func InNetNS(ns string, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Seen by the caller only if fn ends its goroutine with
		// runtime.Goexit, as t.FailNow does.
		r := result{err: fmt.Errorf("netns %s: fn exited its goroutine (t.FailNow?)", ns)}
		// The thread is unlocked only once it is back in the original
		// namespace; if restoring fails it stays locked and the runtime
		// destroys it when this goroutine exits, so no other goroutine is
		// ever scheduled onto a thread in the wrong namespace.
		restored := true
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
			done <- r
		}()

		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = fmt.Errorf("open current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Join(netnsDir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}

		restored = false
		defer func() {
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				if !r.panicked {
					r.err = fmt.Errorf("restore netns after %s: %w (fn: %v)", ns, err, r.err)
				}
				return
			}
			restored = true
		}()
		defer func() {
			if v := recover(); v != nil {
				r = result{panicked: true, value: v}
			}
		}()
		r = result{err: fn()}
	}()
	r := <-done
	if r.panicked {
		panic(r.value)
	}
	return r.err
}
