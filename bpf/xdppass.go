// SPDX-License-Identifier: MIT

package bpf

import "github.com/cilium/ebpf"

// NewXDPPass loads xdp_pass from the test-only object: a program that
// passes every frame, which tests attach to a veth peer so that native XDP
// on the other end receives frames. The product never calls it, so the
// linker leaves the test object out of the binary.
func NewXDPPass() (*ebpf.Program, error) {
	spec, err := LoadIcmplbTest()
	if err != nil {
		return nil, err
	}
	return ebpf.NewProgram(spec.Programs[IcmplbTestProgXdpPass])
}
