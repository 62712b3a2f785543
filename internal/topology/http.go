// SPDX-License-Identifier: MIT

package topology

import (
	"context"
	"net"
	"net/http"
	"time"
)

// HTTPClient returns a client whose connections are made from the host's
// network namespace, to reach servers listening there (such as the agent's
// metrics on the host's loopback). http.Transport dials on goroutines of its
// own, so the namespace is entered per dial. One client per host is kept, so
// that a test polling every 100 ms reuses its connection instead of opening
// one per request: the agent caps its connections and would log that it
// closes idle ones.
func (t *Topology) HTTPClient(host string) *http.Client {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.clients[host]; ok {
		return c
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := t.InNS(host, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	if t.clients == nil {
		t.clients = map[string]*http.Client{}
	}
	t.clients[host] = c
	return c
}
