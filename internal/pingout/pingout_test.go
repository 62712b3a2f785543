// SPDX-License-Identifier: MIT

package pingout

import (
	"slices"
	"testing"
	"time"
)

const sample = `PING 10.0.0.100 (10.0.0.100) 56(84) bytes of data.
64 bytes from 10.0.0.100: icmp_seq=1 ttl=64 time=2.21 ms
64 bytes from 10.0.0.100: icmp_seq=2 ttl=64 time=20.3 ms
64 bytes from 10.0.0.100: icmp_seq=3 ttl=64 time=0.051 ms
64 bytes from 10.0.0.100: icmp_seq=3 ttl=64 time=5.02 ms (DUP!)
64 bytes from 10.0.0.100: icmp_seq=4 ttl=64 time=1203 ms

--- 10.0.0.100 ping statistics ---
5 packets transmitted, 4 received, +1 duplicates, 20% packet loss, time 4005ms
rtt min/avg/max/mdev = 0.051/246.118/1203.000/480.000 ms
`

func TestParse(t *testing.T) {
	r := Parse(sample)
	if !r.Summary || r.Transmitted != 5 || r.Received != 4 || r.Duplicates != 1 {
		t.Errorf("counts %+v", r)
	}
	if r.Min != 51*time.Microsecond || r.MaxRTT != 1203*time.Millisecond || r.MaxBound != 1203*time.Millisecond+time.Microsecond {
		t.Errorf("summary min %v max %v bound %v", r.Min, r.MaxRTT, r.MaxBound)
	}
	want := []Reply{
		{"10.0.0.100", 1, 2210 * time.Microsecond, 2220 * time.Microsecond, false},
		{"10.0.0.100", 2, 20300 * time.Microsecond, 20400 * time.Microsecond, false},
		{"10.0.0.100", 3, 51 * time.Microsecond, 52 * time.Microsecond, false},
		{"10.0.0.100", 3, 5020 * time.Microsecond, 5030 * time.Microsecond, true},
		{"10.0.0.100", 4, 1203 * time.Millisecond, 1204 * time.Millisecond, false},
	}
	if len(r.Replies) != len(want) {
		t.Fatalf("replies %+v", r.Replies)
	}
	for i, w := range want {
		if g := r.Replies[i]; g != w {
			t.Errorf("reply %d: %+v, want %+v", i, g, w)
		}
	}
	if b := r.Bounds(); len(b) != 4 || b[0] != 0.00222 {
		t.Errorf("bounds %v", b)
	}
	if r := Parse("ping: connect: Network is unreachable\n"); r.Summary || len(r.Replies) != 0 {
		t.Errorf("error output parsed as %+v", r)
	}
}

// Outputs of iputils ping 20221126 (Debian 12), captured in namespaces:
// errors returned by the balancer from the VIP, errors from a router
// mixed with replies, a path MTU learnt from an error and then refused
// locally, and -D's timestamps.
const (
	vipUnreachable = `PING 10.0.0.100 (10.0.0.100) 56(84) bytes of data.
From 10.0.0.100 icmp_seq=1 Destination Host Unreachable
From 10.0.0.100 icmp_seq=2 Destination Host Unreachable
From 10.0.0.100 icmp_seq=5 Destination Host Unreachable

--- 10.0.0.100 ping statistics ---
6 packets transmitted, 0 received, +3 errors, 100% packet loss, time 1598ms

`
	vipFragNeeded = `PING 10.0.0.100 (10.0.0.100) 1200(1228) bytes of data.
From 10.0.0.100 icmp_seq=1 Frag needed and DF set (mtu = 1000)

--- 10.0.0.100 ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms

`
	mixed = `PING 10.2.0.5 (10.2.0.5) 56(84) bytes of data.
64 bytes from 10.2.0.5: icmp_seq=1 ttl=64 time=0.054 ms
64 bytes from 10.2.0.5: icmp_seq=2 ttl=64 time=0.063 ms
64 bytes from 10.2.0.5: icmp_seq=3 ttl=64 time=0.028 ms
From 10.1.0.2 icmp_seq=4 Destination Host Unreachable
From 10.1.0.2 icmp_seq=5 Destination Host Unreachable
From 10.1.0.2 icmp_seq=6 Destination Host Unreachable

--- 10.2.0.5 ping statistics ---
6 packets transmitted, 3 received, +3 errors, 50% packet loss, time 1598ms
rtt min/avg/max/mdev = 0.028/0.048/0.063/0.014 ms
`
	localError = `PING 10.3.0.5 (10.3.0.5) 1200(1228) bytes of data.
From 10.1.0.2 icmp_seq=1 Frag needed and DF set (mtu = 1000)
ping: local error: message too long, mtu=1000
ping: local error: message too long, mtu=1000

--- 10.3.0.5 ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 626ms

`
	stamped = `PING 10.3.0.5 (10.3.0.5) 56(84) bytes of data.
[1796375157.584434] From 10.1.0.2 icmp_seq=1 Time to live exceeded
[1796375157.894292] From 10.1.0.2 icmp_seq=2 Time to live exceeded

--- 10.3.0.5 ping statistics ---
2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 310ms

`
)

// ipv6Errors is ping -6 (iputils 20221126) through a router that answered
// with each ICMPv6 error in turn, then forwarded.
const ipv6Errors = `PING fd00:1cb::100(fd00:1cb::100) 1200 data bytes
From fd00:1cb::100 icmp_seq=1 Destination unreachable: No route
From fd00:1cb::100 icmp_seq=2 Time exceeded: Hop limit
From fd00:1cb::100 icmp_seq=3 Packet too big: mtu=1000
From fd00:1cb::100 icmp_seq=4 Destination unreachable: Administratively prohibited
1208 bytes from fd00:1cb::100: icmp_seq=5 ttl=63 time=0.101 ms
1208 bytes from fd00::: icmp_seq=6 ttl=63 time=0.2 ms

--- fd00:1cb::100 ping statistics ---
6 packets transmitted, 2 received, +4 errors, 66.6667% packet loss, time 1001ms
rtt min/avg/max/mdev = 0.101/0.150/0.200/0.050 ms
`

func TestParseIPv6(t *testing.T) {
	r := Parse(ipv6Errors)
	vip := "fd00:1cb::100"
	want := []ErrorLine{{vip, 1, "Destination unreachable: No route"}, {vip, 2, "Time exceeded: Hop limit"},
		{vip, 3, "Packet too big: mtu=1000"}, {vip, 4, "Destination unreachable: Administratively prohibited"}}
	if !slices.Equal(r.Errors, want) {
		t.Errorf("errors %+v\nwant   %+v", r.Errors, want)
	}
	// The address's own colons must not end it, not even a trailing "::".
	if len(r.Replies) != 2 || r.Replies[0].From != vip || r.Replies[0].Seq != 5 || r.Replies[0].RTT != 101*time.Microsecond ||
		r.Replies[1].From != "fd00::" || r.Replies[1].Seq != 6 {
		t.Errorf("replies %+v, want seq 5 from %s in 101µs and seq 6 from fd00::", r.Replies, vip)
	}
	if r.Transmitted != 6 || r.Received != 2 || r.ErrorCount != 4 {
		t.Errorf("summary %d transmitted, %d received, +%d errors; want 6, 2, +4", r.Transmitted, r.Received, r.ErrorCount)
	}
}

func TestParseErrors(t *testing.T) {
	unreach := func(from string, seq int) ErrorLine { return ErrorLine{from, seq, "Destination Host Unreachable"} }
	for _, c := range []struct {
		name                                string
		out                                 string
		transmitted, received, dups, errors int
		replies                             int
		want                                []ErrorLine
	}{
		{"unreachable from the VIP", vipUnreachable, 6, 0, 0, 3, 0,
			[]ErrorLine{unreach("10.0.0.100", 1), unreach("10.0.0.100", 2), unreach("10.0.0.100", 5)}},
		{"frag needed from the VIP", vipFragNeeded, 1, 0, 0, 1, 0,
			[]ErrorLine{{"10.0.0.100", 1, "Frag needed and DF set (mtu = 1000)"}}},
		{"replies then errors", mixed, 6, 3, 0, 3, 3,
			[]ErrorLine{unreach("10.1.0.2", 4), unreach("10.1.0.2", 5), unreach("10.1.0.2", 6)}},
		// The local errors count in the summary but name no source.
		{"local errors", localError, 3, 0, 0, 3, 0,
			[]ErrorLine{{"10.1.0.2", 1, "Frag needed and DF set (mtu = 1000)"}}},
		{"timestamps", stamped, 2, 0, 0, 2, 0,
			[]ErrorLine{{"10.1.0.2", 1, "Time to live exceeded"}, {"10.1.0.2", 2, "Time to live exceeded"}}},
		{"no errors", sample, 5, 4, 1, 0, 5, nil},
		// Not captured: lines as ping's format strings print them. A
		// resolved source comes with its address; a redirect is no
		// error, and the summary then counts none.
		{"name and redirect", "PING 10.9.0.5 (10.9.0.5) 56(84) bytes of data.\n" +
			"From r.example (10.0.0.20) icmp_seq=1 Time to live exceeded\r\n" +
			"From 10.0.0.20: icmp_seq=2 Redirect Host(New nexthop: 10.0.0.5)\n" +
			"64 bytes from 10.9.0.5: icmp_seq=2 ttl=63 time=0.101 ms\n\n" +
			"--- 10.9.0.5 ping statistics ---\n" +
			"2 packets transmitted, 1 received, +1 errors, 50% packet loss, time 1001ms\n", 2, 1, 0, 1, 1,
			[]ErrorLine{{"r.example (10.0.0.20)", 1, "Time to live exceeded"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Parse(c.out)
			if !r.Summary || r.Transmitted != c.transmitted || r.Received != c.received || r.Duplicates != c.dups || r.ErrorCount != c.errors {
				t.Errorf("summary %d transmitted, %d received, +%d duplicates, +%d errors; want %d, %d, +%d, +%d",
					r.Transmitted, r.Received, r.Duplicates, r.ErrorCount, c.transmitted, c.received, c.dups, c.errors)
			}
			if len(r.Replies) != c.replies {
				t.Errorf("%d replies, want %d: %+v", len(r.Replies), c.replies, r.Replies)
			}
			if !slices.Equal(r.Errors, c.want) {
				t.Errorf("errors %+v\nwant   %+v", r.Errors, c.want)
			}
		})
	}
}
