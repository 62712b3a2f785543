// SPDX-License-Identifier: MIT

// Package pingout parses the output of iputils ping for tests: the summary
// and every reply line, with each reply's round trip as ping measured it.
//
// A client's round trip is the upper side of the truth a test judges a
// balancer's measurement against: ping takes its send time before the
// request leaves and its receive time (the kernel's SO_TIMESTAMP) after the
// reply arrived, so whatever measured the same exchange on the way saw a
// shorter or equal round trip.
package pingout

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Reply is one reply line ("64 bytes from 10.0.0.100: icmp_seq=3 ttl=64
// time=2.21 ms").
type Reply struct {
	From string
	Seq  int
	// RTT is the round trip as printed; Max adds the printed resolution
	// (ping rounds to 3 significant digits, to 1 µs at least), so the
	// round trip ping measured is at most Max.
	RTT, Max time.Duration
	Dup      bool
}

// Result is what one ping run printed.
type Result struct {
	Transmitted, Received, Duplicates int
	// Min, Avg and MaxRTT are the summary's round trips, zero when ping
	// printed none; MaxBound adds the printed resolution to MaxRTT.
	Min, Avg, MaxRTT, MaxBound time.Duration
	Replies                    []Reply
	// Summary is false when ping printed no "packets transmitted" line.
	Summary bool
}

var (
	countsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received,(?: \+(\d+) duplicates,)?`)
	rttRE    = regexp.MustCompile(`rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms`)
	replyRE  = regexp.MustCompile(`bytes from ([^:]+): icmp_seq=(\d+)(?: .*)? time=([\d.]+) ms`)
)

// Parse reads ping's output; lines it does not know are skipped.
func Parse(out string) Result {
	var r Result
	if m := countsRE.FindStringSubmatch(out); m != nil {
		r.Summary = true
		r.Transmitted, _ = strconv.Atoi(m[1])
		r.Received, _ = strconv.Atoi(m[2])
		if m[3] != "" {
			r.Duplicates, _ = strconv.Atoi(m[3])
		}
	}
	if m := rttRE.FindStringSubmatch(out); m != nil {
		r.Min, _ = ms(m[1])
		r.Avg, _ = ms(m[2])
		var res time.Duration
		r.MaxRTT, res = ms(m[3])
		r.MaxBound = r.MaxRTT + res
	}
	for line := range strings.Lines(out) {
		m := replyRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seq, _ := strconv.Atoi(m[2])
		rtt, res := ms(m[3])
		r.Replies = append(r.Replies, Reply{From: m[1], Seq: seq, RTT: rtt, Max: rtt + res, Dup: strings.Contains(line, "DUP!")})
	}
	return r
}

// ms parses a decimal number of milliseconds and returns it with the size
// of its last printed digit, which bounds ping's rounding (half of it) plus
// its microsecond truncation.
func ms(v string) (d, res time.Duration) {
	f, _ := strconv.ParseFloat(v, 64)
	res = time.Millisecond
	if _, frac, ok := strings.Cut(v, "."); ok {
		for range len(frac) {
			res /= 10
		}
	}
	return time.Duration(math.Round(f * float64(time.Millisecond))), max(res, time.Microsecond)
}

// Bounds returns the upper bounds (Max) of the replies that are not
// duplicates, in seconds, for histquant.Check.
func (r Result) Bounds() []float64 {
	var out []float64
	for _, p := range r.Replies {
		if !p.Dup {
			out = append(out, p.Max.Seconds())
		}
	}
	return out
}
