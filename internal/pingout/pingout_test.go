// SPDX-License-Identifier: MIT

package pingout

import (
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
