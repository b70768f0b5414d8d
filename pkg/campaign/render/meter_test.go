package render

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// The estimates are what keeps a single call from building a string the
// budget does not cover, so they must bound the real output.
func TestEstimatesBoundOutput(t *testing.T) {
	ctl := "\x00\x01\xff\u2028\U0010FFFF<>&'\""
	vars := map[string]string{"k": ctl, "": "", "a": "b"}
	printfCases := []struct {
		format string
		args   []any
	}{
		{"%s", []any{ctl}},
		{"%q", []any{ctl}},
		{"%+q", []any{ctl}},
		{"%x", []any{ctl}},
		{"% x", []any{ctl}},
		{"%# x", []any{ctl}},
		{"%# X", []any{vars}},
		{"%#v", []any{vars}},
		{"%v %+v %q %x", []any{vars, vars, vars, vars}},
		{"%U", []any{ctl}},
		{"%0999999d", []any{1}},
		{"%9999999d", []any{1}},
		{"%.999999f", []any{1.5}},
		{"%f %e %g", []any{1e308, -1e-308, 1e308}},
		{"%*d", []any{1000000, 1}},
		{"%[2]*[1]d", []any{1, 1000000}},
		{"%-*.*f", []any{1000000, 1000000, 1e308}},
		{"%s %s %s", []any{"one"}},
		{"%!%z%", nil},
		{"%d", []any{"s", 1, 2, vars, nil, true}},
		{"%c%c", []any{0x10FFFF, -1}},
		{"%v", []any{nil}},
		{"%08b %o %O %X", []any{uint8(255), 1 << 62, -1 << 62, uint64(1<<64 - 1)}},
		{"%t %v", []any{true, 3 + 4i}},
	}
	for _, tc := range printfCases {
		if got, est := len(fmt.Sprintf(tc.format, tc.args...)), printfEstimate(tc.format, tc.args); got > est {
			t.Errorf("printf %q %v: %d bytes, estimate %d", tc.format, tc.args, got, est)
		}
	}
	for _, args := range [][]any{{ctl}, {1, 2, 3}, {vars, vars}, {nil, true, 1e308, 3 + 4i}, {}} {
		if got, est := len(fmt.Sprintln(args...)), addSat(printEstimate(args), 1); got > est {
			t.Errorf("println %v: %d bytes, estimate %d", args, got, est)
		}
	}
}

func TestMeterCharges(t *testing.T) {
	m := &meter{}
	m.reset(10, 3*stepCost+5)
	if _, err := m.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.print("x"); err != nil { // a step and 2 bytes of estimate: "x" and a separator
		t.Fatalf("print within budget: %v", err)
	}
	if _, err := m.Write(nil); !errors.Is(err, ErrWorkLimit) {
		t.Fatalf("Write past the budget: %v", err)
	}
	if _, err := m.Write(nil); !errors.Is(err, ErrWorkLimit) {
		t.Fatalf("an exhausted budget stays exhausted: %v", err)
	}

	m.reset(4, 1<<20)
	if _, err := m.Write([]byte("12345")); !errors.Is(err, ErrOutputLimit) || len(m.buf) != 0 {
		t.Fatalf("Write past the output limit: %v, %q written", err, m.buf)
	}
	if _, err := m.printf("%s", strings.Repeat("x", 1<<20)); !errors.Is(err, ErrWorkLimit) {
		t.Fatalf("printf over the budget: %v", err)
	}
}

func TestPanicIsAnErrorAndDropsTheClone(t *testing.T) {
	clones := 0
	p := &part{field: FieldText, outLimit: 100, work: 1 << 20}
	p.clone = func() (*instance, error) {
		clones++
		return &instance{m: &meter{}, exec: func(io.Writer, any) error { panic("boom") }}, nil
	}
	for range 2 {
		if _, err := p.render(nil); !errors.Is(err, errPanicked) || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("render = %v", err)
		}
	}
	if clones != 2 {
		t.Fatalf("%d clones for 2 panicking renders; a clone that panicked must not be reused", clones)
	}
}

func FuzzPrintfEstimate(f *testing.F) {
	for _, s := range []string{"%s", "%# x", "%[2]*[1]d", "%-*.*f", "%!%z%", "%0999999d", "%v%q%U", "%.3[1]x", "%\xe7%\xe7%", "%]%700A", "%[1%9[x", "%A%A%A%700A", "%[][]0%100A", "%[2].[1]*[3]d", "%A%[1]A"} {
		f.Add(s, "str\x00\u2028", 42, 1.5e300)
	}
	f.Fuzz(func(t *testing.T, format, s string, i int, x float64) {
		if len(format) > 64 {
			return // keep widths' output small enough to format quickly
		}
		args := []any{s, i % 2_000_000, x, map[string]string{s: s, "k": ""}, true, nil, uint8(i)}
		for n := range len(args) + 1 {
			if got, est := len(fmt.Sprintf(format, args[:n]...)), printfEstimate(format, args[:n]); got > est {
				t.Fatalf("printf %q %v: %d bytes, estimate %d", format, args[:n], got, est)
			}
		}
	})
}
