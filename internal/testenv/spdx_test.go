// SPDX-License-Identifier: MIT

package testenv

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every source file of ours says its licence: MIT, and GPL-2.0-only OR MIT
// for the data plane's C, which the kernel must accept as GPL-compatible.
// Generated files (bpf2go's) and vendored headers (their own licences) are
// not ours to mark.
func TestSPDXIdentifiers(t *testing.T) {
	root := filepath.Join("..", "..")
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." || rel == filepath.Join("bpf", "include") || d.Name() == "testdata" || d.Name() == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		want := ""
		switch ext := filepath.Ext(p); {
		case ext == ".go" && !strings.HasSuffix(p, "_bpfel.go"):
			want = "// SPDX-License-Identifier: MIT"
		case (ext == ".c" || ext == ".h") && strings.HasPrefix(rel, "bpf"+string(filepath.Separator)):
			want = "// SPDX-License-Identifier: (GPL-2.0-only OR MIT)"
		default:
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if first, _, _ := strings.Cut(string(data), "\n"); first != want {
			t.Errorf("%s: first line %q, want %q", rel, first, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Errorf("checked %d files; the walk is wrong", n)
	}
}
