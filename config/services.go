// SPDX-License-Identifier: MIT

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The services file (--config.file) lists the services; every other setting
// stays a flag, so that one file can be shared by agents on several
// interfaces:
//
//	services:
//	  - vip: 10.0.0.100       # IPv4 or IPv6; a service is one family
//	    snat: 10.0.0.101      # optional, default the VIP
//	    backends:
//	      - 10.0.0.2          # weight 1
//	      - address: 10.0.0.3
//	        weight: 2         # 0 drains
//	    outlier: {window: 10s, max_loss_ratio: 0.1}   # optional, each key
//	    probe: {interval: 1s, rise: 2, fall: 3}       # defaults to its flag
//	    all_down: fail-open
type file struct {
	Services []fileService `yaml:"services"`
}

type fileService struct {
	VIP      string        `yaml:"vip"`
	SNAT     string        `yaml:"snat"`
	Backends []fileBackend `yaml:"backends"`
	// The health settings stay nodes until the service's index is known,
	// so that an error names its field (services[1].outlier.window) and
	// an absent key can take its flag's value (decodeHealth).
	Outlier yaml.Node `yaml:"outlier"`
	Probe   yaml.Node `yaml:"probe"`
	AllDown yaml.Node `yaml:"all_down"`
}

// fileBackend is a backend written as its address alone or as a mapping
// with its weight; a weight left out is DefaultWeight, a written 0 drains.
type fileBackend struct {
	Address string
	Weight  *int
	line    int
}

func (b *fileBackend) UnmarshalYAML(n *yaml.Node) error {
	b.line = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&b.Address)
	case yaml.MappingNode:
		var m struct {
			Address string `yaml:"address"`
			Weight  *int   `yaml:"weight"`
		}
		// Decode does not inherit the decoder's KnownFields: check keys
		// here so that a typo ("wieght") is an error, not weight 1.
		for i := 0; i < len(n.Content); i += 2 {
			if k := n.Content[i].Value; k != "address" && k != "weight" {
				return fmt.Errorf("line %d: unknown field %q of a backend (want address, weight)", n.Content[i].Line, k)
			}
			// yaml.v3 truncates a float into an int: 0.5 would drain.
			if v := n.Content[i+1]; n.Content[i].Value == "weight" && v.ShortTag() == "!!float" {
				return fmt.Errorf("line %d: weight %s is not a whole number 0..%d", v.Line, v.Value, MaxWeight)
			}
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		b.Address, b.Weight = m.Address, m.Weight
		return nil
	}
	return fmt.Errorf("line %d: a backend is an address or a mapping of address and weight", n.Line)
}

// LoadServices reads and checks a services file: each error names the file
// and the field (services[1].backends[0].weight: must be 0..1000). A
// health setting the file leaves out takes base's (see ParseServices).
func LoadServices(path string, base Service) ([]Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s %s (%s): %w", SetFile.Flag, path, SetFile.Env, err)
	}
	svcs, err := ParseServices(data, base)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return svcs, nil
}

// ParseServices decodes and checks the contents of a services file. Only
// base's Outlier, Probe and AllDown are used: they are the values of the
// health keys a service leaves out, the flags' values as the agent calls
// it (Config.Service), so that the flags set every service's defaults.
// outlier.max_p99_rtt is not checked against --loss-timeout here, which
// the file does not know: Config.Validate does.
func ParseServices(data []byte, base Service) ([]Service, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("services: the file is empty; list at least one service")
		}
		return nil, oneLine(err)
	}
	if err := dec.Decode(new(file)); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document: keep every service in one list")
	}
	svcs := make([]Service, len(f.Services))
	for i, fs := range f.Services {
		s := &svcs[i]
		s.Outlier, s.Probe, s.AllDown = base.Outlier, base.Probe, base.AllDown
		if err := decodeHealth(s, fs, i); err != nil {
			return nil, err
		}
		var err error
		if s.VIP, err = parseAddr(fs.VIP); err != nil {
			return nil, fmt.Errorf("services[%d].vip: %w", i, err)
		}
		if fs.SNAT != "" {
			if s.SNAT, err = parseAddr(fs.SNAT); err != nil {
				return nil, fmt.Errorf("services[%d].snat: %w", i, err)
			}
		}
		for j, fb := range fs.Backends {
			b := Backend{Weight: DefaultWeight}
			if b.Addr, err = parseAddr(fb.Address); err != nil {
				return nil, fmt.Errorf("services[%d].backends[%d].address: %w", i, j, err)
			}
			if fb.Weight != nil {
				b.Weight = *fb.Weight
			}
			s.Backends = append(s.Backends, b)
		}
		*s = s.withDefaults()
	}
	if err := validateServices(svcs, true); err != nil {
		return nil, err
	}
	return svcs, nil
}

// decodeHealth sets the health keys fs gives, each checked for its type:
// their bounds are Service.validate's, shared with the flags.
func decodeHealth(s *Service, fs fileService, i int) error {
	for _, g := range []struct {
		name   string
		node   *yaml.Node
		fields []healthKey
	}{
		{"outlier", &fs.Outlier, s.outlierKeys()},
		{"probe", &fs.Probe, s.probeKeys()},
	} {
		n := deref(g.node)
		// Absent or empty (every key commented out): the flags' values.
		if n.Kind == 0 || n.ShortTag() == "!!null" {
			continue
		}
		if n.Kind != yaml.MappingNode {
			return fmt.Errorf("services[%d].%s: want a mapping of %s", i, g.name, keyNames(g.fields))
		}
		seen := map[string]bool{}
		for k := 0; k+1 < len(n.Content); k += 2 {
			key := n.Content[k].Value
			j := slices.IndexFunc(g.fields, func(f healthKey) bool { return f.key == g.name+"."+key })
			if j < 0 {
				return fmt.Errorf("services[%d].%s: unknown key %q (want %s)", i, g.name, key, keyNames(g.fields))
			}
			path := fmt.Sprintf("services[%d].%s.%s", i, g.name, key)
			if seen[key] {
				return fmt.Errorf("%s: given twice", path)
			}
			seen[key] = true
			if err := decodeScalar(n.Content[k+1], path, g.fields[j].dst); err != nil {
				return err
			}
		}
	}
	if fs.AllDown.Kind != 0 {
		return decodeScalar(&fs.AllDown, fmt.Sprintf("services[%d].all_down", i), &s.AllDown)
	}
	return nil
}

func keyNames(keys []healthKey) string {
	names := make([]string, len(keys))
	for i, k := range keys {
		_, names[i], _ = strings.Cut(k.key, ".")
	}
	return strings.Join(names, ", ")
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// decodeScalar sets *dst from n, refusing what yaml.v3 would convert
// silently: a float truncated into an int, a bare number of nanoseconds.
func decodeScalar(n *yaml.Node, path string, dst any) error {
	n = deref(n)
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || tag == "!!null" {
		return fmt.Errorf("%s: missing or not a single value", path)
	}
	switch d := dst.(type) {
	case *time.Duration:
		v, err := time.ParseDuration(strings.TrimSpace(n.Value))
		// A bare number has no unit to read it in (10: seconds?
		// nanoseconds?); 0 means the same in every unit.
		if err != nil || (tag != "!!str" && v != 0) {
			return fmt.Errorf("%s: %s is not a duration; want a duration such as 10s", path, n.Value)
		}
		*d = v
		return nil
	case *int:
		if tag != "!!int" {
			return fmt.Errorf("%s: %s is not a whole number", path, n.Value)
		}
	case *float64:
		if tag != "!!int" && tag != "!!float" {
			return fmt.Errorf("%s: %s is not a number", path, n.Value)
		}
	case *string:
		if tag != "!!str" {
			return fmt.Errorf("%s: %s is not a word", path, n.Value)
		}
	}
	if err := n.Decode(dst); err != nil {
		return fmt.Errorf("%s: %w", path, oneLine(err))
	}
	return nil
}

func parseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, errors.New("missing")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

// oneLine keeps the first line of a YAML error, which yaml.v3 spreads over
// lines when a file has several type errors.
func oneLine(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n")
	msg, _, _ = strings.Cut(strings.TrimSpace(msg), "\n")
	return errors.New(msg)
}

// where names a service's fields in errors: the flags and variable that set
// them, or their path in the services file.
type where struct {
	file bool
	svc  int
}

// errorf reports a problem with field (vip, backends[2], ...) whose value
// is what: "backend 10.0.0.2 is given twice (--backend, ICMPLB_BACKENDS)"
// from flags, "services[0].backends[1]: 10.0.0.2 is given twice" from the file.
func (w where) errorf(field, what string, set Setting, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if w.file {
		return fmt.Errorf("services[%d].%s: %s", w.svc, field, msg)
	}
	// A tail after ";" explains; the setting goes before it.
	msg, tail, _ := strings.Cut(msg, ";")
	if tail != "" {
		tail = ";" + tail
	}
	return fmt.Errorf("%s %s (%s, %s)%s", what, msg, set.Flag, set.Env, tail)
}

// bad reports a bad value of a health setting: "--outlier.window 1s
// (ICMPLB_OUTLIER_WINDOW): must be 2s..5m" from the flags,
// "services[1].outlier.window: must be 2s..5m" from the file.
func (w where) bad(k healthKey, value any, format string, args ...any) error {
	if w.file {
		return fmt.Errorf("services[%d].%s: %s", w.svc, k.key, fmt.Sprintf(format, args...))
	}
	return k.set.errorf(value, format, args...)
}

// name is how an error names k beside the setting it is about.
func (w where) name(k healthKey) string {
	if w.file {
		return k.key
	}
	return k.set.Flag
}

// check is w.bad(k, ...) unless ok.
func (w where) check(ok bool, k healthKey, value any, format string, args ...any) error {
	if ok {
		return nil
	}
	return w.bad(k, value, format, args...)
}

func (w where) durationIn(k healthKey, v, lo, hi time.Duration) error {
	if v < lo || v > hi {
		return w.bad(k, fmtDuration(v), "must be %s..%s", fmtDuration(lo), fmtDuration(hi))
	}
	return nil
}

func (w where) intIn(k healthKey, v, lo, hi int) error {
	if v < lo || v > hi {
		return w.bad(k, v, "must be %d..%d", lo, hi)
	}
	return nil
}

// healthKey is a health setting of a service: its key in the file, its
// flag, and (in outlierKeys and probeKeys) where its value goes.
type healthKey struct {
	key string
	set Setting
	dst any
}

var (
	keyWindow       = healthKey{key: "outlier.window", set: settingIn[Outlier]("Window")}
	keyMinRequests  = healthKey{key: "outlier.min_requests", set: settingIn[Outlier]("MinRequests")}
	keyMaxLoss      = healthKey{key: "outlier.max_loss_ratio", set: settingIn[Outlier]("MaxLossRatio")}
	keyMaxP99       = healthKey{key: "outlier.max_p99_rtt", set: settingIn[Outlier]("MaxP99RTT")}
	keyBaseEjection = healthKey{key: "outlier.base_ejection_time", set: settingIn[Outlier]("BaseEjectionTime")}
	keyMaxEjection  = healthKey{key: "outlier.max_ejection_time", set: settingIn[Outlier]("MaxEjectionTime")}
	keyMaxEjectPct  = healthKey{key: "outlier.max_ejection_percent", set: settingIn[Outlier]("MaxEjectionPercent")}
	keyInterval     = healthKey{key: "probe.interval", set: settingIn[Probe]("Interval")}
	keyTimeout      = healthKey{key: "probe.timeout", set: settingIn[Probe]("Timeout")}
	keyRise         = healthKey{key: "probe.rise", set: settingIn[Probe]("Rise")}
	keyFall         = healthKey{key: "probe.fall", set: settingIn[Probe]("Fall")}
	keyAllDown      = healthKey{key: "all_down", set: settingOf("AllDown")}
)

func (k healthKey) to(dst any) healthKey { k.dst = dst; return k }

// outlierKeys are the keys of a service's outlier mapping, each bound to
// its field of s.
func (s *Service) outlierKeys() []healthKey {
	o := &s.Outlier
	return []healthKey{
		keyWindow.to(&o.Window), keyMinRequests.to(&o.MinRequests), keyMaxLoss.to(&o.MaxLossRatio),
		keyMaxP99.to(&o.MaxP99RTT), keyBaseEjection.to(&o.BaseEjectionTime),
		keyMaxEjection.to(&o.MaxEjectionTime), keyMaxEjectPct.to(&o.MaxEjectionPercent),
	}
}

func (s *Service) probeKeys() []healthKey {
	p := &s.Probe
	return []healthKey{keyInterval.to(&p.Interval), keyTimeout.to(&p.Timeout), keyRise.to(&p.Rise), keyFall.to(&p.Fall)}
}

// validateServices checks each service and what they must not share.
func validateServices(svcs []Service, fromFile bool) error {
	if fromFile && len(svcs) == 0 {
		return errors.New("services: none listed; list at least one service")
	}
	if len(svcs) > MaxServices {
		return fmt.Errorf("services: %d listed, at most %d are supported", len(svcs), MaxServices)
	}
	vips := map[netip.Addr]int{}
	fronts := map[netip.Addr]string{}
	total := 0
	for i, s := range svcs {
		s = s.withDefaults()
		w := where{file: fromFile, svc: i}
		if err := s.validate(w); err != nil {
			return err
		}
		if j, dup := vips[s.VIP]; dup {
			return w.errorf("vip", "VIP", SetVIP, "%s is also the VIP of services[%d]; one service per VIP", s.VIP, j)
		}
		vips[s.VIP] = i
		fronts[s.VIP] = fmt.Sprintf("the VIP of services[%d]", i)
		if _, ok := fronts[s.SNAT]; !ok {
			fronts[s.SNAT] = fmt.Sprintf("the SNAT address of services[%d]", i)
		}
		total += len(s.Backends)
	}
	if total > MaxBackends {
		return fmt.Errorf("services: %d backends in all, at most %d are supported (a backend of several services counts once per service)", total, MaxBackends)
	}
	// A backend that is another service's front would receive its own
	// balanced requests and replies.
	for i, s := range svcs {
		for j, b := range s.Backends {
			if f, ok := fronts[b.Addr]; ok {
				return where{file: fromFile, svc: i}.errorf(fmt.Sprintf("backends[%d]", j), "backend", SetBackend,
					"%s is %s; a backend must be another host", b.Addr, f)
			}
		}
	}
	return nil
}

// validate checks one service with its defaults applied.
func (s Service) validate(w where) error {
	if err := unicast(w, "vip", "VIP", SetVIP, s.VIP); err != nil {
		return err
	}
	if err := unicast(w, "snat", "SNAT address", SetSNAT, s.SNAT); err != nil {
		return err
	}
	if err := sameFamily(w, "snat", "SNAT address", SetSNAT, s.SNAT, s.VIP, "give one of the VIP's family, or none (the VIP)"); err != nil {
		return err
	}
	if len(s.Backends) == 0 {
		if w.file {
			return w.errorf("backends", "", SetBackend, "none listed; give at least one backend")
		}
		return fmt.Errorf("no backends: give at least one %s (%s, comma-separated)", SetBackend.Flag, SetBackend.Env)
	}
	if len(s.Backends) > MaxBackends {
		return w.errorf("backends", "backends:", SetBackend, "%d given; at most %d are supported", len(s.Backends), MaxBackends)
	}
	seen := make(map[netip.Addr]bool, len(s.Backends))
	for i, b := range s.Backends {
		field := fmt.Sprintf("backends[%d]", i)
		if err := unicast(w, field, "backend", SetBackend, b.Addr); err != nil {
			return err
		}
		if err := sameFamily(w, field, "backend", SetBackend, b.Addr, s.VIP, "balance it under a VIP of its family, in a service of its own"); err != nil {
			return err
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			return w.errorf(field+".weight", fmt.Sprintf("backend %s weight", b.Addr), SetBackend, "must be 0..%d", MaxWeight)
		}
		if seen[b.Addr] {
			return w.errorf(field, "backend", SetBackend, "%s is given twice", b.Addr)
		}
		seen[b.Addr] = true
		if b.Addr == s.VIP {
			return w.errorf(field, "backend", SetBackend, "%s is the VIP itself; a backend must be another host", b.Addr)
		}
		if b.Addr == s.SNAT {
			return w.errorf(field, "backend", SetBackend, "%s is the SNAT address; a backend must be another host", b.Addr)
		}
	}
	return s.validateHealth(w)
}

// validateHealth checks the bounds of Outlier, Probe and AllDown (bounds in
// health.go), but for outlier.max_p99_rtt, which depends on --loss-timeout
// (validateP99).
func (s Service) validateHealth(w where) error {
	o, p := s.Outlier, s.Probe
	err := firstError(
		w.durationIn(keyWindow, o.Window, MinOutlierWindow, MaxOutlierWindow),
		w.intIn(keyMinRequests, o.MinRequests, 1, MaxOutlierMinRequests),
		// Written so that NaN fails too.
		w.check(o.MaxLossRatio >= 0 && o.MaxLossRatio <= 1, keyMaxLoss, o.MaxLossRatio, "must be 0..1 (1: never eject on loss)"),
		w.durationIn(keyBaseEjection, o.BaseEjectionTime, MinEjectionTime, MaxEjectionTime),
		w.durationIn(keyMaxEjection, o.MaxEjectionTime, MinEjectionTime, MaxEjectionTime),
		w.check(o.MaxEjectionTime >= o.BaseEjectionTime, keyMaxEjection, fmtDuration(o.MaxEjectionTime),
			"must be at least %s %s", w.name(keyBaseEjection), fmtDuration(o.BaseEjectionTime)),
		w.intIn(keyMaxEjectPct, o.MaxEjectionPercent, 0, 100),
		w.check(s.AllDown == AllDownFailOpen || s.AllDown == AllDownPass, keyAllDown, fmt.Sprintf("%q", s.AllDown),
			"must be %s or %s", AllDownFailOpen, AllDownPass),
	)
	// Interval 0 disables probes: their other settings are unused.
	if err != nil || p.Interval == 0 {
		return err
	}
	if err := w.durationIn(keyInterval, p.Interval, MinProbeInterval, MaxProbeInterval); err != nil {
		return fmt.Errorf("%w (0 disables probes)", err)
	}
	return firstError(
		w.durationIn(keyTimeout, p.Timeout, MinProbeTimeout, MaxProbeInterval),
		// A longer timeout would have a backend's probes overlap.
		w.check(p.Timeout <= p.Interval, keyTimeout, fmtDuration(p.Timeout),
			"must be at most %s %s", w.name(keyInterval), fmtDuration(p.Interval)),
		w.intIn(keyRise, p.Rise, 1, MaxProbeCount),
		w.intIn(keyFall, p.Fall, 1, MaxProbeCount),
	)
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// validateP99 checks outlier.max_p99_rtt against the agent's loss timeout.
func (s Service) validateP99(w where, lossTimeout time.Duration) error {
	v := s.Outlier.MaxP99RTT
	if v == 0 || (v >= MinOutlierMaxP99RTT && v < lossTimeout) {
		return nil
	}
	return w.bad(keyMaxP99, fmtDuration(v), "must be 0 (off) or at least %s and below %s %s: a later reply counts as lost, its RTT is never measured",
		fmtDuration(MinOutlierMaxP99RTT), setLossTimeout.Flag, fmtDuration(lossTimeout))
}

// unicast refuses an address that cannot be one routable host: IPv4 or
// IPv6, as the data plane balances both.
func unicast(w where, field, what string, s Setting, a netip.Addr) error {
	switch {
	case !a.IsValid():
		if w.file {
			return w.errorf(field, what, s, "missing")
		}
		return fmt.Errorf("no %s given: set %s (%s)", what, s.Flag, s.Env)
	// A zone scopes an address to one link of this host: the data plane
	// keeps none, and no routable address needs one.
	case a.Zone() != "":
		return w.errorf(field, what, s, "%s has a zone; give the address without %%%s", a, a.Zone())
	// The data plane keeps IPv4 as ::ffff:a.b.c.d: written so, the
	// address would be IPv4 to it and IPv6 to every check here.
	case a.Is4In6():
		return w.errorf(field, what, s, "%s is an IPv4-mapped IPv6 address; write it as IPv4: %s", a, a.Unmap())
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
		return w.errorf(field, what, s, "%s is not a unicast host address", a)
	// 0/8 is "this network", 240/4 reserved and 255.255.255.255 the
	// limited broadcast: the data plane refuses them as sources too.
	case a.Is4() && (a.As4()[0] == 0 || a.As4()[0] >= 240):
		return w.errorf(field, what, s, "%s is not a unicast host address", a)
	// fe80::/10 exists on every link at once: which link a packet to it
	// takes is the sender's choice, and a router never forwards it.
	case a.Is6() && a.IsLinkLocalUnicast():
		return w.errorf(field, what, s, "%s is link-local; give a routable (global or unique local) address", a)
	}
	return nil
}

// sameFamily refuses an address of another family than the service's VIP:
// the data plane translates ICMPv4 to ICMPv4 and ICMPv6 to ICMPv6 only.
func sameFamily(w where, field, what string, s Setting, a, vip netip.Addr, fix string) error {
	if a.Is4() == vip.Is4() {
		return nil
	}
	return w.errorf(field, what, s, "%s is %s, the VIP %s is %s; a service is one family: %s", a, family(a), vip, family(vip), fix)
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// Reload reads the services file again: the new configuration, or an error
// and c unchanged in meaning. Only the services change on reload; every
// other setting is a flag of the running process.
func (c Config) Reload() (Config, error) {
	if c.ConfigFile == "" {
		return c, fmt.Errorf("no services file to reload: the services come from flags; start with %s (%s) to reload them", SetFile.Flag, SetFile.Env)
	}
	svcs, err := LoadServices(c.ConfigFile, c.Service)
	if err != nil {
		return c, err
	}
	n := c
	n.Services = svcs
	if err := n.Validate(); err != nil {
		return c, err
	}
	return n.WithDefaults(), nil
}
