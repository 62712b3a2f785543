// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// runLinearMax is the longest frame BPF_PROG_TEST_RUN hands an XDP program
// in one piece (a page less XDP headroom and skb_shared_info); the rest of
// a longer one goes into fragments the program cannot read. jumbo_test.go
// covers longer frames on a veth.
const runLinearMax = 4096 - 256 - 320

// TestICMPChecksumLengths runs messages of every length modulo 4 (the
// verifier sums 32-bit words, then a 16-bit word and an odd byte), with
// frames padded to the Ethernet minimum by non-zero bytes that must stay
// outside the sum, up to the longest frame a test run can carry.
func TestICMPChecksumLengths(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	rng := rand.New(rand.NewPCG(1, 1071))
	lengths := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18, 1472, 1473, runLinearMax - 42 - 1, runLinearMax - 42}
	for i, n := range lengths {
		t.Run(fmt.Sprintf("payload %d", n), func(t *testing.T) {
			client := netip.AddrFrom4([4]byte{10, 5, 0, byte(i + 1)})
			req := echoRequest(client, hop1MAC, uint16(0x100+i), 1)
			req.payload = make([]byte, n)
			for j := range req.payload {
				req.payload[j] = byte(rng.Uint32() | 1) // never zero: a misplaced odd byte shows
			}
			if pad := 60 - len(req.frame()); pad > 0 {
				req.trailer = bytes.Repeat([]byte{0xa5}, pad)
			}
			if len(req.frame()) > runLinearMax {
				t.Fatalf("test bug: %d-byte frame is longer than a test run carries", len(req.frame()))
			}

			// The last byte of the message, flipped: no checksum fix-up.
			last := 14 + 20 + 8 + n - 1
			bad := req.frame()
			bad[last] ^= 0x40
			h.requireUntouched(t, bad, xdpPass, IcmplbReasonREASON_MALFORMED)
			h.requireNoSession(t, client, req.echoID)

			_, natID := h.forward(t, req)
			h.requireInflight(t, req, backendA, natID)
			rep := replyTo(req, backendA, vip, natID)
			bad = rep.frame()
			bad[last] ^= 0x40
			h.requireUntouched(t, bad, xdpPass, IcmplbReasonREASON_MALFORMED)
			h.returnReply(t, rep, client, req.echoID, hop1MAC)
		})
	}
}

// TestICMPChecksumEveryByte flips each byte of an odd-length message after
// its type and code (those change the message's kind instead).
func TestICMPChecksumEveryByte(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x0e0e, 1)
	req.payload = []byte{1, 2, 3, 4, 5}
	req.trailer = bytes.Repeat([]byte{0xff}, 60-14-20-8-5)
	f := req.frame()
	for off := 14 + 20 + 2; off < 14+20+8+5; off++ {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(f)
			bad[off] ^= bit
			h.requireUntouched(t, bad, xdpPass, IcmplbReasonREASON_MALFORMED)
		}
	}
	// The trailer is not part of the message: any bytes will do there.
	req.trailer = bytes.Repeat([]byte{0x5a}, len(req.trailer))
	h.forward(t, req)
}

// TestICMPChecksumDeepChange changes one byte near the end of the longest
// frame a test run carries: in a request (checksum left as it was), and in
// a backend's reply that is otherwise well-formed (its checksum recomputed),
// which then answers another request than ours.
func TestICMPChecksumDeepChange(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x0d0d, 1)
	req.payload = make([]byte, runLinearMax-42)
	for i := range req.payload {
		req.payload[i] = byte(i*7 + 3)
	}
	deep := len(req.payload) - 3
	bad := req.frame()
	bad[14+20+8+deep] ^= 0x10
	h.requireUntouched(t, bad, xdpPass, IcmplbReasonREASON_MALFORMED)

	_, natID := h.forward(t, req)
	rep := replyTo(req, backendA, vip, natID)
	other := rep
	other.payload = bytes.Clone(rep.payload)
	other.payload[deep] ^= 0x10
	h.requireUntouched(t, other.frame(), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH)
	h.returnReply(t, rep, client1, 0x0d0d, hop1MAC)
}
