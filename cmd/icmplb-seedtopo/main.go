// SPDX-License-Identifier: MIT

// Command icmplb-seedtopo brings the seed test network up or down by hand,
// for demos and for poking at a failing end-to-end test (developers run it
// with go run; it is not part of the product):
//
//	go run ./cmd/icmplb-seedtopo up PREFIX    build the seed topology in namespaces PREFIX-*, print it, leave it up
//	go run ./cmd/icmplb-seedtopo down PREFIX  remove namespaces PREFIX-* (no error if there are none)
//
// Enter a host with: ip netns exec PREFIX-h1 bash
package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/icmplb/icmplb/internal/topology"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "icmplb-seedtopo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 2 || (args[0] != "up" && args[0] != "down") {
		return fmt.Errorf("usage: icmplb-seedtopo up|down PREFIX")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: creates network namespaces")
	}
	prefix := args[1]
	if args[0] == "down" {
		return topology.DeleteNamed(prefix)
	}

	t, err := topology.NewNamed(prefix, topology.Seed())
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "HOST\tNAMESPACE\tADDRESSES\tMAC\n")
	fmt.Fprintf(w, "switch\t%s\tbridge %s\t-\n", t.SwitchNS, t.Bridge)
	for _, name := range t.HostNames() {
		h := t.Hosts[name]
		addrs := []string{h.Addr.String()}
		if h.Addr6.IsValid() {
			addrs = append(addrs, h.Addr6.String())
		}
		for _, p := range h.Extra {
			addrs = append(addrs, p.String())
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", h.Name, h.NS, strings.Join(addrs, ","), h.MAC)
	}
	return w.Flush()
}
