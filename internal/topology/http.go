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
// own, so the namespace is entered per dial.
func (t *Topology) HTTPClient(host string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
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
}
