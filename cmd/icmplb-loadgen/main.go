// SPDX-License-Identifier: MIT

// Command icmplb-loadgen sends ICMP echo frames out of an interface at
// millions per second, from an XDP program run in live-frames mode on one
// pinned CPU, and prints the rate (a developer's tool for benchmarks, not
// part of the product; package loadgen holds the logic). It works in the
// network namespace it runs in:
//
//	ip netns exec NS icmplb-loadgen --iface a0 --dst-mac 02:..:b0 --vip 10.0.0.100 --sessions 64 --duration 5s
//
// On a veth the peer receives the frames only if it has NAPI: a native XDP
// program attached, or GRO on (ethtool -K PEER gro on). Needs root and
// Linux 5.18+.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/icmplb/icmplb/internal/loadgen"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "icmplb-loadgen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("icmplb-loadgen", flag.ContinueOnError)
	iface := fs.String("iface", "", "interface to send from (required)")
	dstMAC := fs.String("dst-mac", "", "destination MAC: the balancer's interface (required)")
	srcMAC := fs.String("src-mac", "", "source MAC (default: the interface's)")
	client := fs.String("client", "10.32.0.1", "first client address")
	clients := fs.Uint("clients", 1, "client addresses cycled over, from --client on")
	vip := fs.String("vip", "", "destination address (required)")
	sessions := fs.Uint("sessions", 1, "echo ids cycled over, from --id-base on, 1..65536")
	idBase := fs.Uint("id-base", 0, "first echo id")
	reply := fs.Bool("reply", false, "send echo replies instead of requests")
	size := fs.Int("size", loadgen.DefaultSize, fmt.Sprintf("frame size in bytes, Ethernet header included, %d..%d", loadgen.MinSize, loadgen.MaxSize))
	frames := fs.Uint64("frames", 0, "frames to send (0: until --duration)")
	duration := fs.Duration("duration", 0, "how long to send (0: until --frames; 5s if neither is set)")
	cpu := fs.Int("cpu", 0, "CPU to pin the generator to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *iface == "" || *dstMAC == "" || *vip == "" {
		return errors.New("--iface, --dst-mac and --vip are required")
	}
	if *idBase > 0xffff || *clients > 0xffffffff || *sessions > 0xffffffff {
		return errors.New("--id-base, --clients or --sessions out of range")
	}
	if *frames == 0 && *duration == 0 {
		*duration = 5 * time.Second
	}
	ifc, err := net.InterfaceByName(*iface)
	if err != nil {
		return err
	}
	s := loadgen.Settings{
		SrcMAC:   ifc.HardwareAddr,
		Clients:  uint32(*clients),
		Sessions: uint32(*sessions),
		IDBase:   uint16(*idBase),
		Reply:    *reply,
		Size:     *size,
	}
	if *srcMAC != "" {
		if s.SrcMAC, err = net.ParseMAC(*srcMAC); err != nil {
			return fmt.Errorf("--src-mac: %w", err)
		}
	}
	if s.DstMAC, err = net.ParseMAC(*dstMAC); err != nil {
		return fmt.Errorf("--dst-mac: %w", err)
	}
	if s.Client, err = netip.ParseAddr(*client); err != nil {
		return fmt.Errorf("--client: %w", err)
	}
	if s.Dst, err = netip.ParseAddr(*vip); err != nil {
		return fmt.Errorf("--vip: %w", err)
	}
	g, err := loadgen.NewGenerator(s)
	if err != nil {
		return err
	}
	defer g.Close()
	unpin, err := loadgen.Pin(*cpu)
	if err != nil {
		return err
	}
	defer unpin()
	r, err := g.Run(ifc.Index, *frames, *duration)
	if err != nil {
		return err
	}
	fmt.Printf("sent %d frames out of %s in %.3fs from CPU %d: %.0f pps\n", r.Frames, *iface, r.Elapsed.Seconds(), *cpu, r.PPS())
	return nil
}
