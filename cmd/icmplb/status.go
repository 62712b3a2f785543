// SPDX-License-Identifier: MIT

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter"
)

// statusCmd reads the agent's HTTP API twice, Interval apart, and shows
// what happened in between. The API, not the pinned maps: it needs no
// privilege, works from another container or host, and the agent alone
// knows weights, states and settled losses.
type statusCmd struct {
	config.Status `embed:""`
}

func (s *statusCmd) Run() error {
	return s.run(os.Stdout)
}

func (s *statusCmd) run(w io.Writer) error {
	client := &http.Client{Timeout: 10 * time.Second}
	prev, err := fetchStatus(client, s.Agent)
	if err != nil {
		return err
	}
	time.Sleep(s.Interval)
	cur, err := fetchStatus(client, s.Agent)
	if err != nil {
		return err
	}
	rows := exporter.Window(prev, cur)
	if s.Output == config.OutputJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []exporter.StatusRow{}
		}
		return enc.Encode(rows)
	}
	return exporter.WriteTable(w, rows)
}

func fetchStatus(client *http.Client, agent string) (*exporter.Status, error) {
	url := strings.TrimSuffix(agent, "/") + exporter.StatusPath
	resp, err := client.Get(url)
	if err != nil {
		return nil, fmt.Errorf("ask the agent: %w (is it running, and is --agent its --web.listen-address?)", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var st exporter.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET %s: not a status document: %w", url, err)
	}
	return &st, nil
}
