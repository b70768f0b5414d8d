package render

import (
	"fmt"
	"math"
	"reflect"
	"strings"
)

// stepCost is the charge of one loop iteration, template call, write or
// metered value on top of the bytes it handles: each costs tens of
// nanoseconds in text/template, the time it takes to copy or escape a few
// hundred bytes, so an empty loop and a byte-heavy one exhaust the same
// budget in comparable time.
const stepCost = 64

// fmtMaxWidth is the largest width or precision fmt honours when written in
// the format (it refuses a number only once it is over a million before its
// last digit); fmtMaxArgWidth is the largest taken from an operand by '*'.
// Larger ones print %!(BADWIDTH) instead of padding.
const (
	fmtMaxWidth    = 10_000_009
	fmtMaxArgWidth = 1_000_000
)

// expandFactor bounds how many bytes a printf verb writes per byte of its
// operand: "%# x" writes "0xNN " for each byte, 5 bytes.
const expandFactor = 5

// keepBuffer is the largest output buffer an idle meter keeps for reuse;
// larger ones are dropped so that one huge rendering does not pin memory.
const keepBuffer = 64 << 10

// meter is one execution's budget and output: the io.Writer the template
// writes to, and the receiver of the functions that instrumented templates
// call. It is used by one execution at a time.
type meter struct {
	buf   []byte
	limit int // output bytes allowed
	work  int // work units left
}

func (m *meter) reset(limit, work int) {
	m.buf = m.buf[:0]
	m.limit = limit
	m.work = work
}

func (m *meter) release() {
	if cap(m.buf) > keepBuffer {
		m.buf = nil
	}
}

// charge takes one step plus n bytes from the budget.
func (m *meter) charge(n int) error {
	if n < 0 || n > m.work-stepCost {
		m.work = 0
		return ErrWorkLimit
	}
	m.work -= stepCost + n
	return nil
}

// Write charges p and appends it to the output unless the output limit would
// be passed. The instrumented templates write an empty text node at every
// loop iteration and template call, which is how those are charged.
func (m *meter) Write(p []byte) (int, error) {
	if err := m.charge(len(p)); err != nil {
		return 0, err
	}
	if len(p) > m.limit-len(m.buf) {
		return 0, ErrOutputLimit
	}
	m.buf = append(m.buf, p...)
	return len(p), nil
}

// funcs are the functions instrumented templates call: the metering
// function and metered replacements of the builtins that build strings of
// arbitrary size from small operands. Their output is identical to the
// builtins'.
func (m *meter) funcs() map[string]any {
	return map[string]any{
		meterFunc: m.pass,
		"print":   m.print,
		"printf":  m.printf,
		"println": m.println,
	}
}

// pass charges v's size and returns it unchanged. reflect.Value in and out
// keeps the value exactly as the template would have had it, including an
// invalid (nil) one.
func (m *meter) pass(v reflect.Value) (reflect.Value, error) {
	if err := m.charge(valueSize(v)); err != nil {
		return reflect.Value{}, err
	}
	return v, nil
}

func (m *meter) print(args ...any) (string, error) {
	return m.format(printEstimate(args), func() string { return fmt.Sprint(args...) })
}

func (m *meter) println(args ...any) (string, error) {
	return m.format(addSat(printEstimate(args), 1), func() string { return fmt.Sprintln(args...) })
}

func (m *meter) printf(format string, args ...any) (string, error) {
	return m.format(printfEstimate(format, args), func() string { return fmt.Sprintf(format, args...) })
}

// format charges an upper estimate before allocating, so that no single
// call builds a string the budget does not cover, then the excess if the
// estimate was short.
func (m *meter) format(estimate int, f func() string) (string, error) {
	if err := m.charge(estimate); err != nil {
		return "", err
	}
	s := f()
	if excess := len(s) - estimate; excess > 0 {
		if err := m.charge(excess); err != nil {
			return "", err
		}
	}
	return s, nil
}

// valueSize is the number of bytes v holds: what passing it on or printing
// it costs. Rendering data is strings, the data map, and the numbers and
// booleans of literals and builtins, which count 0.
func valueSize(v reflect.Value) int {
	switch v.Kind() {
	case reflect.String:
		return v.Len()
	case reflect.Map:
		if v.CanInterface() {
			if vars, ok := v.Interface().(map[string]string); ok {
				n := 0
				for k, s := range vars {
					n += len(k) + len(s)
				}
				return n
			}
		}
		n := 0
		for it := v.MapRange(); it.Next(); {
			n += valueSize(it.Key()) + valueSize(it.Value())
		}
		return n
	case reflect.Slice, reflect.Array:
		return v.Len()
	case reflect.Interface:
		if v.IsNil() {
			return 0
		}
		return valueSize(v.Elem())
	}
	return 0
}

// argEstimate bounds the bytes %v writes for a: its content plus separators
// for a map, and the longest formatting of a number (%f of a large float
// writes over 300 digits).
func argEstimate(a any) int {
	if s, ok := a.(string); ok {
		return len(s)
	}
	v := reflect.ValueOf(a)
	switch v.Kind() {
	case reflect.String:
		return v.Len()
	case reflect.Map, reflect.Slice, reflect.Array:
		return addSat(mulSat(valueSize(v), 2), addSat(mulSat(v.Len(), 4), 16))
	}
	return 400
}

func printEstimate(args []any) int {
	n := len(args) // separators
	for _, a := range args {
		n = addSat(n, argEstimate(a))
	}
	return n
}

// printfEstimate bounds fmt.Sprintf(format, args...): seven times the
// format (a verb without operand prints as "%!v(MISSING)", and a 2-byte "%"
// and invalid UTF-8 byte as the 14 bytes "%!\uFFFD(MISSING)") and 10 for a
// trailing "%!(NOVERB)", every width and precision it states times the
// number of values they may pad (each key and element of a map), and the
// operands (the largest once per verb if argument indexes can repeat them),
// each with room for a "%!(EXTRA type=...)" wrapper and times
// expandFactor when a verb or flag can expand its operand (%x, %X, %q, %U,
// '#', ' ').
func printfEstimate(format string, args []any) int {
	n := addSat(addSat(mulSat(len(format), 7), 10), mulSat(len(args), 32))
	widths, factor, verbs := 0, 1, 0
	// The scan follows fmt's doPrintf: flags, [index], width, .precision,
	// [index], verb.
	for i := 0; i < len(format); {
		if format[i] != '%' {
			i++
			continue
		}
		i++
		for ; i < len(format) && strings.IndexByte("#0+- ", format[i]) >= 0; i++ {
			if format[i] == '#' || format[i] == ' ' {
				factor = expandFactor
			}
		}
		var (
			w          int
			afterIndex bool
		)
		i, afterIndex = skipArgIndex(format, i)
		if i < len(format) && format[i] == '*' {
			widths = addSat(widths, fmtMaxArgWidth)
			i, afterIndex = i+1, false
		} else {
			w, i = fmtNumber(format, i)
			widths = addSat(widths, w)
		}
		if i+1 < len(format) && format[i] == '.' {
			i, afterIndex = skipArgIndex(format, i+1)
			if i < len(format) && format[i] == '*' {
				widths = addSat(widths, fmtMaxArgWidth)
				i, afterIndex = i+1, false
			} else {
				w, i = fmtNumber(format, i)
				widths = addSat(widths, w)
			}
		}
		if !afterIndex {
			i, _ = skipArgIndex(format, i)
		}
		if i < len(format) {
			if strings.IndexByte("xXqU", format[i]) >= 0 {
				factor = expandFactor
			}
			i++ // a multi-byte verb's other bytes scan as text
			verbs++
		}
	}
	// With argument indexes, each verb may print any operand.
	reordered := strings.IndexByte(format, '[') >= 0
	// A width pads each key and element of a map or slice operand.
	padded, largest := 1, 0
	for _, a := range args {
		e := argEstimate(a)
		n = addSat(n, mulSat(e, factor))
		largest = max(largest, e)
		switch v := reflect.ValueOf(a); v.Kind() {
		case reflect.Map, reflect.Slice, reflect.Array:
			padded = addSat(padded, mulSat(v.Len(), 2))
		}
	}
	if reordered {
		n = addSat(n, mulSat(mulSat(largest, factor), verbs))
	}
	return addSat(n, mulSat(widths, padded))
}

// skipArgIndex skips an argument index "[n]" at format[i] as fmt does,
// reporting whether it was well formed.
func skipArgIndex(format string, i int) (int, bool) {
	if i >= len(format) || format[i] != '[' {
		return i, false
	}
	if len(format)-i < 3 {
		return i + 1, false
	}
	for j := i + 1; j < len(format); j++ {
		if format[j] == ']' {
			if _, end := fmtNumber(format[:j], i+1); end != j || j == i+1 {
				return j + 1, false
			}
			return j + 1, true
		}
	}
	return i + 1, false
}

// fmtNumber reads the decimal number at format[i], capped at fmtMaxWidth,
// and returns it with the index after it.
func fmtNumber(format string, i int) (int, int) {
	w := 0
	for ; i < len(format) && format[i] >= '0' && format[i] <= '9'; i++ {
		w = min(w*10+int(format[i]-'0'), fmtMaxWidth)
	}
	return w, i
}

// addSat and mulSat add and multiply non-negative numbers, saturating at
// math.MaxInt: an estimate only needs to exceed the budget, and must not
// wrap around below it.
func addSat(a, b int) int {
	if b > math.MaxInt-a {
		return math.MaxInt
	}
	return a + b
}

func mulSat(a, k int) int {
	if k > 0 && a > math.MaxInt/k {
		return math.MaxInt
	}
	return a * k
}
