// SPDX-License-Identifier: MIT

package balancer

import (
	"log/slog"
	"net"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// warnVLANStrip tells the operator when VLAN tags may be invisible to the
// data plane. XDP sees a tag only while it is in the frame: a NIC (or a veth)
// that parses tags into metadata hands XDP an untagged-looking frame, which
// would be balanced as if it came from this network. Reading the tag from
// metadata needs a device-bound program (bpf_xdp_metadata_rx_vlan_tag), which
// this project avoids: its teardown crashed Linux 6.18 here.
func warnVLANStrip(iface *net.Interface, log *slog.Logger) {
	e, err := ethtool.NewEthtool()
	if err != nil {
		log.Debug("cannot read interface features", "iface", iface.Name, "err", err)
		return
	}
	defer e.Close()
	features, err := e.Features(iface.Name)
	if err != nil || !features["rx-vlan-hw-parse"] {
		return
	}
	msg := "the interface may hand XDP frames whose VLAN tag is in metadata (rx-vlan-offload on): tagged echoes to the VIP would be balanced as untagged; if it carries VLANs, run `ethtool -K " +
		iface.Name + " rxvlan off` (on a veth, `txvlan off` on its peer: the tag travels from the sender's offload)"
	if hasVLANUppers(iface.Index) {
		log.Warn(msg, "iface", iface.Name)
		return
	}
	log.Info(msg, "iface", iface.Name)
}

// hasVLANUppers reports whether VLAN devices sit on the interface: then it is
// a trunk and tagged frames do reach it.
func hasVLANUppers(index int) bool {
	links, err := netlink.LinkList()
	if err != nil {
		return false
	}
	for _, l := range links {
		if l.Type() == "vlan" && l.Attrs().ParentIndex == index {
			return true
		}
	}
	return false
}
