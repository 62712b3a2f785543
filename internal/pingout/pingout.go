// SPDX-License-Identifier: MIT

// Package pingout parses the output of iputils ping for tests: the summary,
// every reply line, with each reply's round trip as ping measured it, and
// every ICMP error line ("From X icmp_seq=N Destination Host Unreachable";
// with ping -6, e.g. "Destination unreachable: No route").
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

// ErrorLine is one ICMP error ping received for one of its requests
// ("From 10.0.0.100 icmp_seq=3 Destination Host Unreachable").
type ErrorLine struct {
	// From is the error's source as printed: an address with -n, else
	// possibly "name (address)".
	From string
	Seq  int
	// Text is ping's description of the error, e.g. "Time to live
	// exceeded" or "Frag needed and DF set (mtu = 1400)".
	Text string
}

// Result is what one ping run printed.
type Result struct {
	Transmitted, Received, Duplicates int
	// ErrorCount is the summary's "+N errors": ICMP errors received and
	// local send errors ("ping: local error: ..."), which have no
	// ErrorLine, so it may exceed len(Errors).
	ErrorCount int
	// Min, Avg and MaxRTT are the summary's round trips, zero when ping
	// printed none; MaxBound adds the printed resolution to MaxRTT.
	Min, Avg, MaxRTT, MaxBound time.Duration
	Replies                    []Reply
	Errors                     []ErrorLine
	// Summary is false when ping printed no "packets transmitted" line.
	Summary bool
}

var (
	countsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?(?:, \+\d+ corrupted)?(?:, \+(\d+) errors)?,`)
	rttRE    = regexp.MustCompile(`rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms`)
	// An IPv6 source has colons of its own: the first ": icmp_seq=" ends it.
	replyRE = regexp.MustCompile(`bytes from (.+?): icmp_seq=(\d+)(?: .*)? time=([\d.]+) ms`)
	// -D puts a "[seconds] " stamp first. A redirect, which is no error
	// of a request, prints a colon after its source ("From X: icmp_seq=").
	errorRE = regexp.MustCompile(`^(?:\[[\d.]+\] )?From (.*[^:]) icmp_seq=(\d+) (.+)$`)
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
		if m[4] != "" {
			r.ErrorCount, _ = strconv.Atoi(m[4])
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
		if m := errorRE.FindStringSubmatch(strings.TrimRight(line, "\r\n")); m != nil {
			seq, _ := strconv.Atoi(m[2])
			r.Errors = append(r.Errors, ErrorLine{From: m[1], Seq: seq, Text: strings.TrimSpace(m[3])})
			continue
		}
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
