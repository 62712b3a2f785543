// SPDX-License-Identifier: MIT

package responder

import (
	"slices"
	"testing"
	"time"
)

// The scheme is what end-to-end tests compute their expected loss from, so
// its promises are checked without needing root.
func TestLossSchemeExactPerBlock(t *testing.T) {
	for _, loss := range []float64{0, 0.01, 0.1, 0.25, 0.3, 0.333, 0.5, 0.99, 1} {
		cfg := Config{Loss: loss, Seed: 7}
		want := int(loss*BlockSize + 0.5)
		for block := range uint64(50) {
			got := 0
			for i := block * BlockSize; i < (block+1)*BlockSize; i++ {
				if cfg.Drops(i) {
					got++
				}
			}
			if got != want {
				t.Fatalf("loss %v block %d: %d dropped, want %d", loss, block, got, want)
			}
		}
		if got := cfg.Dropped(300); got != uint64(3*want) {
			t.Errorf("loss %v: Dropped(300) = %d, want %d", loss, got, 3*want)
		}
	}
}

func TestLossSchemeDroppedMatchesDrops(t *testing.T) {
	cfg := Config{Loss: 0.3, Seed: 42}
	var count uint64
	for n := range uint64(1000) {
		if got := cfg.Dropped(n); got != count {
			t.Fatalf("Dropped(%d) = %d, counting Drops gives %d", n, got, count)
		}
		if cfg.Drops(n) {
			count++
		}
	}
}

func TestLossSchemeDeterministicAndSeeded(t *testing.T) {
	pattern := func(seed uint64, block uint64) []uint64 {
		cfg := Config{Loss: 0.3, Seed: seed}
		var p []uint64
		for i := block * BlockSize; i < (block+1)*BlockSize; i++ {
			if cfg.Drops(i) {
				p = append(p, i%BlockSize)
			}
		}
		return p
	}
	a, b := pattern(1, 0), pattern(1, 0)
	if !slices.Equal(a, b) {
		t.Fatalf("seed 1 block 0 differs between calls: %v vs %v", a, b)
	}
	if slices.Equal(a, pattern(2, 0)) {
		t.Errorf("seeds 1 and 2 drop the same requests: %v", a)
	}
	if slices.Equal(a, pattern(1, 1)) {
		t.Errorf("blocks 0 and 1 of seed 1 drop the same requests: %v", a)
	}
	// Dropping the first 30 of each block would meet the count but make
	// loss come in one burst per block; the choice must be spread out.
	if a[len(a)-1] < 50 {
		t.Errorf("seed 1 block 0 drops only early requests: %v", a)
	}
}

func TestResponderDropsFollowScheme(t *testing.T) {
	// drop() caches one block at a time; it must agree with Drops across
	// block boundaries.
	cfg := Config{Loss: 0.3, Seed: 3}
	r := &Responder{cfg: cfg}
	for i := range uint64(450) {
		if got, want := r.drop(i), cfg.Drops(i); got != want {
			t.Fatalf("request %d: drop %v, scheme says %v", i, got, want)
		}
	}
}

func TestJitterBounds(t *testing.T) {
	cfg := Config{Delay: 5 * time.Millisecond, Jitter: 2 * time.Millisecond, Seed: 1}
	r := &Responder{cfg: cfg}
	r.jitter = newJitterRand(cfg.Seed)
	lo, hi := time.Hour, time.Duration(0)
	for range 10000 {
		d := r.delay()
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 3*time.Millisecond || hi > 7*time.Millisecond {
		t.Errorf("delays span [%v, %v], want within [3ms, 7ms]", lo, hi)
	}
	if lo > 3100*time.Microsecond || hi < 6900*time.Microsecond {
		t.Errorf("delays span only [%v, %v] of [3ms, 7ms]", lo, hi)
	}

	r.cfg = Config{Delay: time.Millisecond, Jitter: 5 * time.Millisecond}
	for range 1000 {
		if d := r.delay(); d < 0 {
			t.Fatalf("negative delay %v", d)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{
		{Loss: -0.1}, {Loss: 1.01}, {Delay: -time.Millisecond}, {Jitter: -time.Millisecond},
	} {
		if _, err := Listen(cfg); err == nil {
			t.Errorf("Listen(%+v) succeeded", cfg)
		}
	}
}
