// SPDX-License-Identifier: MIT

// Command icmplb-responder answers pings in the network namespace it runs in
// with a chosen delay and loss, standing in for a backend in demos (a
// developer's tool, not part of the product):
//
//	ip netns exec PREFIX-h2 icmplb-responder --delay 20ms --loss 0.3 --seed 1 --disable-kernel-echo
//
// Without --disable-kernel-echo the namespace must already have
// net.ipv4.icmp_echo_ignore_all=1, or every ping is answered twice. The loss
// scheme (an exact share per block of 100 requests) is described in package
// responder. It runs until SIGINT or SIGTERM and then prints its counters.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/icmplb/icmplb/internal/responder"
)

func main() {
	if err := run(); err != nil {
		// Errors of package responder already name it.
		msg := err.Error()
		if !strings.HasPrefix(msg, "responder: ") {
			msg = "responder: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
}

func run() error {
	var cfg responder.Config
	flag.DurationVar(&cfg.Delay, "delay", 0, "hold each reply back this long")
	flag.DurationVar(&cfg.Jitter, "jitter", 0, "add a uniform offset in [-jitter, +jitter] to each delay")
	flag.Float64Var(&cfg.Loss, "loss", 0, "fraction of requests to leave unanswered, 0 to 1")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the choice of dropped requests and of the jitter")
	disable := flag.Bool("disable-kernel-echo", false, "set net.ipv4.icmp_echo_ignore_all=1 in this namespace first")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	r, err := responder.Listen(cfg)
	if err != nil {
		return err
	}
	// Switching the kernel off only once the socket is open leaves no
	// moment in which nobody answers.
	if *disable {
		if err := responder.DisableKernelEchoHere(); err != nil {
			r.Close()
			return fmt.Errorf("disable kernel echo: %w", err)
		}
	} else if b, err := os.ReadFile("/proc/sys/net/ipv4/icmp_echo_ignore_all"); err == nil && len(b) > 0 && b[0] == '0' {
		fmt.Fprintln(os.Stderr, "responder: warning: the kernel answers pings here too (use --disable-kernel-echo)")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		r.Close()
	}()
	fmt.Fprintf(os.Stderr, "responder: delay %v ±%v, loss %g, seed %d\n", cfg.Delay, cfg.Jitter, cfg.Loss, cfg.Seed)
	serr := r.Serve()
	r.Close()
	req, rep, drop := r.Stats()
	fmt.Printf("requests %d replied %d dropped %d send-errors %d\n", req, rep, drop, r.SendErrors())
	return serr
}
