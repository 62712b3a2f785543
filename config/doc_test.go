// SPDX-License-Identifier: MIT

package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// flagTable is the page users read the settings in.
const flagTable = "../docs/configuration.md"

var tableCode = regexp.MustCompile("`([^`]*)`")

// The flag table users read says what Flags says: every flag, its
// variable and its default, and no flag that does not exist.
func TestFlagTableMatchesFlags(t *testing.T) {
	data, err := os.ReadFile(flagTable)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for line := range strings.SplitSeq(string(data), "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		cols := strings.Split(strings.Trim(line, "|"), "|")
		if len(cols) < 4 {
			t.Errorf("%s: row %q has %d columns, want 4", flagTable, line, len(cols))
			continue
		}
		name := strings.TrimPrefix(tableCode.FindStringSubmatch(cols[0])[1], "--")
		rows[name] = cols
	}
	for _, f := range Flags() {
		cols, ok := rows[f.Name]
		if !ok {
			t.Errorf("%s: no row for --%s", flagTable, f.Name)
			continue
		}
		delete(rows, f.Name)
		if env := tableCode.FindStringSubmatch(cols[1]); env == nil || env[1] != f.Env {
			t.Errorf("%s: --%s variable %q, want %q", flagTable, f.Name, cols[1], f.Env)
		}
		def := strings.TrimSpace(cols[2])
		switch {
		case f.Required:
			if def != "(required)" {
				t.Errorf("%s: --%s default %q, want (required)", flagTable, f.Name, def)
			}
		case f.Default != "":
			if d := tableCode.FindStringSubmatch(def); d == nil || d[1] != f.Default {
				t.Errorf("%s: --%s default %q, want `%s`", flagTable, f.Name, def, f.Default)
			}
		}
	}
	for name := range rows {
		t.Errorf("%s: a row for --%s, which is not a flag", flagTable, name)
	}
}
