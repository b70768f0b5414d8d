package render_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/postflow/postflow/pkg/campaign/render"
)

func mustParse(t testing.TB, src render.Source, lim render.Limits) *render.Template {
	t.Helper()
	tm, err := render.Parse(src, lim)
	if err != nil {
		t.Fatalf("Parse(%+v): %v", src, err)
	}
	return tm
}

func TestExecute(t *testing.T) {
	vars := map[string]string{
		"name":       "Ann",
		"email":      "ann@example.com",
		"tier":       "gold",
		"first name": "Annabel",
		"empty":      "",
		"unused":     "never printed",
	}
	for _, tc := range []struct {
		name string
		src  render.Source
		want render.Message
	}{
		{
			name: "text and html",
			src:  render.Source{Subject: "Hi {{.name}}", Text: "Dear {{.name}},\nbye", HTML: "<p>Dear {{.name}},</p>"},
			want: render.Message{Subject: "Hi Ann", Text: "Dear Ann,\nbye", HTML: "<p>Dear Ann,</p>"},
		},
		{
			name: "email variable",
			src:  render.Source{Subject: "For {{.email}}", Text: "{{.email}}", HTML: `<a href="mailto:{{.email}}">{{.email}}</a>`},
			want: render.Message{Subject: "For ann@example.com", Text: "ann@example.com", HTML: `<a href="mailto:ann@example.com">ann@example.com</a>`},
		},
		{
			name: "text only",
			src:  render.Source{Text: "{{.name}}"},
			want: render.Message{Text: "Ann"},
		},
		{
			name: "html only",
			src:  render.Source{HTML: "{{.name}}"},
			want: render.Message{HTML: "Ann"},
		},
		{
			name: "conditionals",
			src:  render.Source{Text: `{{if eq .tier "gold"}}G{{else}}S{{end}}{{if .empty}}E{{else}}-{{end}}{{with .name}}[{{.}}]{{end}}{{if and .empty .nosuch}}x{{end}}`},
			want: render.Message{Text: "G-[Ann]"},
		},
		{
			name: "range over the data and over an integer",
			src:  render.Source{Text: `{{range $k, $v := .}}{{if ne $k "unused"}}{{$k}}={{$v}};{{end}}{{end}}|{{range $i := 3}}{{$i}}{{end}}`},
			want: render.Message{Text: "email=ann@example.com;empty=;first name=Annabel;name=Ann;tier=gold;|012"},
		},
		{
			name: "builtins",
			src:  render.Source{Text: `{{printf "%05d|%-4s|%q" 42 .name .tier}} {{print .name 1 2}} {{println .name}}{{len .name}} {{index .name 0}} {{slice .name 1}} {{html "<&>"}} {{js "'"}} {{urlquery "a b"}} {{.name | printf "%s!"}}`},
			want: render.Message{Text: "00042|Ann |\"gold\" Ann1 2 Ann\n3 65 nn &lt;&amp;&gt; \\' a+b Ann!"},
		},
		{
			name: "index with a literal key",
			src:  render.Source{Text: `{{index . "first name"}} {{index $ "name"}}`},
			want: render.Message{Text: "Annabel Ann"},
		},
		{
			name: "defined template",
			src:  render.Source{Text: `{{define "greet"}}Hello {{.name}}{{end}}{{template "greet" .}}!`, HTML: `{{block "b" .}}<b>{{.name}}</b>{{end}}`},
			want: render.Message{Text: "Hello Ann!", HTML: "<b>Ann</b>"},
		},
		{
			name: "text body is not escaped",
			src:  render.Source{Subject: "<{{.name}}> & co", Text: "<b>{{.name}}</b> & co"},
			want: render.Message{Subject: "<Ann> & co", Text: "<b>Ann</b> & co"},
		},
		{
			name: "trim markers and comments",
			src:  render.Source{Text: "a  {{- /* note */ -}}  b {{- .name -}} c"},
			want: render.Message{Text: "abAnnc"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := mustParse(t, tc.src, render.Limits{}).Execute(vars)
			if err != nil {
				t.Fatal(err)
			}
			if *msg != tc.want {
				t.Fatalf("got  %+v\nwant %+v", *msg, tc.want)
			}
		})
	}
}

func TestHTMLEscaping(t *testing.T) {
	vars := map[string]string{
		"script": "<script>alert(1)</script>",
		"quote":  `"><img src=x onerror=alert(1)>`,
		"js":     "javascript:alert(1)",
		"amp":    "a&b",
		"css":    "expression(alert(1))",
	}
	for _, tc := range []struct{ src, want string }{
		{`<p>{{.script}}</p>`, `<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>`},
		{`<p title="{{.quote}}">x</p>`, `<p title="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;">x</p>`},
		{`<p title={{.quote}}>x</p>`, `<p title=&#34;&gt;&lt;img&#32;src&#61;x&#32;onerror&#61;alert(1)&gt;>x</p>`},
		{`<a href="{{.js}}">x</a>`, `<a href="#ZgotmplZ">x</a>`},
		{`<a href="https://example.com/?q={{.amp}}">x</a>`, `<a href="https://example.com/?q=a%26b">x</a>`},
		{`<script>var s = {{.script}};</script>`, `<script>var s = "\u003cscript\u003ealert(1)\u003c/script\u003e";</script>`},
		{`<p style="color: {{.css}}">x</p>`, `<p style="color: ZgotmplZ">x</p>`},
		{`<p>{{.script | html}}</p>`, `<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>`},
		{`<p>{{html .amp}}</p>`, `<p>a&amp;b</p>`},
		{`<p>{{printf "%s" .script}}</p>`, `<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>`},
	} {
		msg, err := mustParse(t, render.Source{HTML: tc.src}, render.Limits{}).Execute(vars)
		if err != nil {
			t.Errorf("%s: %v", tc.src, err)
			continue
		}
		if msg.HTML != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.src, msg.HTML, tc.want)
		}
	}
}

func TestMissingVariable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src      render.Source
		field    string
		variable string
	}{
		{"subject", render.Source{Subject: "Hi {{.name}}", Text: "x"}, render.FieldSubject, "name"},
		{"text", render.Source{Text: "{{.present}} {{.absent}}"}, render.FieldText, "absent"},
		{"html", render.Source{HTML: "<p>{{.absent}}</p>"}, render.FieldHTML, "absent"},
		{"html attribute", render.Source{HTML: `<a href="{{.url}}">x</a>`}, render.FieldHTML, "url"},
		{"condition", render.Source{Text: "{{if .flag}}x{{end}}"}, render.FieldText, "flag"},
		{"dollar in range", render.Source{Text: "{{range 2}}{{$.absent}}{{end}}"}, render.FieldText, "absent"},
		{"index literal", render.Source{Text: `{{index . "first name"}}`}, render.FieldText, "first name"},
		{"function argument", render.Source{Text: `{{printf "%s" .absent}}`}, render.FieldText, "absent"},
		{"defined template", render.Source{Text: `{{define "t"}}{{.absent}}{{end}}{{template "t" .}}`}, render.FieldText, "absent"},
		{"email", render.Source{Text: "x", HTML: "{{.email}}"}, render.FieldHTML, "email"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm := mustParse(t, tc.src, render.Limits{})
			msg, err := tm.Execute(map[string]string{"present": "p"})
			var re *render.RenderError
			if !errors.As(err, &re) {
				t.Fatalf("Execute = %+v, %v; want a RenderError", msg, err)
			}
			if re.Field != tc.field || re.Variable != tc.variable {
				t.Fatalf("RenderError{Field: %q, Variable: %q}, want %q, %q (%v)", re.Field, re.Variable, tc.field, tc.variable, err)
			}
			if msg != nil {
				t.Fatalf("message %+v with an error", msg)
			}
		})
	}
	t.Run("nil vars", func(t *testing.T) {
		_, err := mustParse(t, render.Source{Text: "{{.x}}"}, render.Limits{}).Execute(nil)
		var re *render.RenderError
		if !errors.As(err, &re) || re.Variable != "x" {
			t.Fatalf("Execute(nil) = %v", err)
		}
	})
}

// A reference that is not evaluated cannot fail: the contract is
// missingkey=error's, per evaluation, not a static check.
func TestUntakenBranchNeedsNoVariable(t *testing.T) {
	tm := mustParse(t, render.Source{Text: `{{if .vip}}{{.code}}{{end}}{{if and .vip .code}}x{{end}}{{if or .name .code}}y{{end}}`}, render.Limits{})
	msg, err := tm.Execute(map[string]string{"vip": "", "name": "n"})
	if err != nil || msg.Text != "y" {
		t.Fatalf("Execute = %+v, %v", msg, err)
	}
}

func TestSubject(t *testing.T) {
	for _, tc := range []struct {
		name    string
		subject string
		value   string
		want    error
	}{
		{"LF in value", "Hi {{.v}}", "a\nb", render.ErrSubjectLine},
		{"CR in value", "Hi {{.v}}", "a\rb", render.ErrSubjectLine},
		{"line break in source", "Hi\n{{.v}}", "a", render.ErrSubjectLine},
		{"998 octets", "{{.v}}", strings.Repeat("é", 499), nil},
		{"999 octets", "{{.v}}x", strings.Repeat("é", 499), render.ErrSubjectTooLong},
		{"endless loop", "{{range 1000000000}}x{{end}}", "", render.ErrSubjectTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := mustParse(t, render.Source{Subject: tc.subject, Text: "t"}, render.Limits{}).Execute(map[string]string{"v": tc.value})
			if tc.want == nil {
				if err != nil || len(msg.Subject) != 998 {
					t.Fatalf("Execute = %+v, %v", msg, err)
				}
				return
			}
			var re *render.RenderError
			if !errors.As(err, &re) || re.Field != render.FieldSubject || !errors.Is(err, tc.want) {
				t.Fatalf("Execute error %v, want a subject RenderError %v", err, tc.want)
			}
		})
	}
}

func TestParseError(t *testing.T) {
	deep := ""
	for i := range 70 {
		deep += fmt.Sprintf(`{{define "t%d"}}{{template "t%d" .}}{{end}}`, i, i+1)
	}
	deep += `{{define "t70"}}x{{end}}{{template "t0" .}}`
	for _, tc := range []struct {
		name  string
		src   render.Source
		lim   render.Limits
		field string
		is    error
		msg   string
	}{
		{name: "subject syntax", src: render.Source{Subject: "{{.x", Text: "t"}, field: render.FieldSubject, msg: "unclosed action"},
		{name: "text syntax", src: render.Source{Text: "{{if .x}}"}, field: render.FieldText, msg: "unexpected EOF"},
		{name: "html syntax", src: render.Source{Text: "t", HTML: "{{end}}"}, field: render.FieldHTML, msg: "unexpected {{end}}"},
		{name: "html unfinished tag", src: render.Source{HTML: `<a href="{{.x}}`}, field: render.FieldHTML, msg: "ends in a non-text context"},
		{name: "html ambiguous", src: render.Source{HTML: `<a href="{{if .x}}/p{{else}}/q?a={{end}}{{.y}}">`}, field: render.FieldHTML, msg: "{{.y}} appears in an ambiguous context within a URL"},
		{name: "unknown function", src: render.Source{Text: "{{sprig .x}}"}, field: render.FieldText, msg: `function "sprig" not defined`},
		{name: "internal function", src: render.Source{HTML: "{{_metered .x}}"}, field: render.FieldHTML, msg: `function "_metered" not defined`},
		{name: "undefined template", src: render.Source{Text: `{{template "nope" .}}`}, field: render.FieldText, msg: `undefined template "nope"`},
		{name: "recursion", src: render.Source{Text: `{{define "a"}}{{template "b" .}}{{end}}{{define "b"}}{{template "a" .}}{{end}}{{template "a" .}}`}, field: render.FieldText, msg: "recursively"},
		{name: "deep calls", src: render.Source{Text: deep}, field: render.FieldText, msg: "nest deeper"},
		{name: "no body", src: render.Source{Subject: "s"}, field: render.FieldText, is: render.ErrNoBody},
		{name: "too large", src: render.Source{Text: "t", HTML: strings.Repeat("x", 11)}, lim: render.Limits{MaxTemplateBytes: 10}, field: render.FieldHTML, is: render.ErrTemplateTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm, err := render.Parse(tc.src, tc.lim)
			var pe *render.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %v, %v; want a ParseError", tm, err)
			}
			if pe.Field != tc.field {
				t.Fatalf("ParseError field %q, want %q (%v)", pe.Field, tc.field, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("ParseError %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ParseError %q does not contain %q", err, tc.msg)
			}
		})
	}
}

func TestVars(t *testing.T) {
	tm := mustParse(t, render.Source{
		Subject: `{{.subj}} {{if .flag}}{{.a}}{{else if .elif}}{{.b}}{{end}}`,
		Text: `{{range $k, $v := .}}{{$k}}{{.inrange}}{{$.dollar}}{{end}}` +
			`{{with .w}}{{.inwith}}{{else}}{{.welse}}{{end}}` +
			`{{index . "first name"}}{{(.paren)}}{{$d := .}}{{$d.alias}}` +
			`{{template "t" .}}{{define "t"}}{{.indef}}{{end}}`,
		HTML: `<p>{{.email}}</p>{{if eq .tier "gold"}}{{printf "%s" .code | html}}{{end}}{{range 2}}{{.}}{{end}}{{.subj}}`,
	}, render.Limits{})
	want := []string{"a", "b", "code", "dollar", "elif", "email", "first name", "flag", "indef", "paren", "subj", "tier", "w", "welse"}
	if got := tm.Vars(); !slices.Equal(got, want) {
		t.Fatalf("Vars() = %q\nwant     %q", got, want)
	}
	tm.Vars()[0] = "changed"
	if tm.Vars()[0] != "a" {
		t.Fatal("Vars returned the template's own slice")
	}
}

func TestOutputLimit(t *testing.T) {
	kib := strings.Repeat("y", 1024)
	for _, src := range []render.Source{
		{Text: "{{range 1000000000}}" + kib + "{{end}}"},
		{HTML: "{{range 1000000000}}<p>" + kib + "</p>{{end}}"},
		{HTML: "{{range 1000000000}}<p>{{$.v}}</p>{{end}}"},
	} {
		_, err := mustParse(t, src, render.Limits{}).Execute(map[string]string{"v": kib})
		var re *render.RenderError
		if !errors.As(err, &re) || !errors.Is(err, render.ErrOutputLimit) {
			t.Errorf("%.40q: Execute error %v, want ErrOutputLimit", src.Text+src.HTML, err)
		}
	}

	tm := mustParse(t, render.Source{Text: "{{.v}}", HTML: "{{.v}}"}, render.Limits{MaxOutputBytes: 10})
	if msg, err := tm.Execute(map[string]string{"v": "0123456789"}); err != nil || msg.Text != "0123456789" {
		t.Fatalf("output at the limit: %+v, %v", msg, err)
	}
	if _, err := tm.Execute(map[string]string{"v": "0123456789+"}); !errors.Is(err, render.ErrOutputLimit) {
		t.Fatalf("output over the limit: %v", err)
	}
	if _, err := tm.Execute(map[string]string{"v": "<>"}); err != nil {
		t.Fatalf("escaped output under the limit: %v", err)
	}
	if _, err := tm.Execute(map[string]string{"v": "<<<"}); !errors.Is(err, render.ErrOutputLimit) {
		t.Fatalf("escaped output over the limit: %v", err)
	}
}

// Templates that work, or build memory, without writing: the output limit
// does not stop them, the work limit must.
func TestWorkLimit(t *testing.T) {
	// A small budget keeps the test fast; the defaults are exercised below.
	lim := render.Limits{MaxWork: 2 << 20}
	big := strings.Repeat("a", 256<<10)
	vars := map[string]string{
		"big":   big,
		"big2":  strings.Clone(big), // equal but not the same memory, so eq compares bytes
		"jsurl": "javascript:" + big,
		"css":   big + "expression(",
	}
	both := []string{
		`{{range 1000000000}}{{end}}`,
		`{{range 1000000}}{{range 1000000}}{{end}}{{end}}`,
		`{{range 1000000000}}{{continue}}{{end}}`,
		`{{$x := "ab"}}{{range 100}}{{$x = print $x $x}}{{end}}`,
		`{{$x := "ab"}}` + strings.Repeat(`{{$x = printf "%s%s" $x $x}}`, 64),
		`{{range 1000000000}}{{$y := printf "%01000000d" 1}}{{end}}`,
		`{{range 1000000000}}{{$y := printf "%*d" 1000000 1}}{{end}}`,
		`{{range 1000000000}}{{$y := eq $.big $.big2}}{{end}}`,
		`{{range 1000000000}}{{$y := js $.big}}{{end}}`,
		`{{range 1000000000}}{{$y := "<<<<<<<<" | html | html | html | html | html | html | html | html}}{{end}}`,
		`{{range 1000000000}}{{$y := html (html (html (html (html (html "<<<<<<<<")))))}}{{end}}`,
		`{{define "a"}}{{template "b"}}{{template "b"}}{{end}}{{define "b"}}{{range 1000}}{{end}}{{end}}{{range 1000000000}}{{template "a"}}{{end}}`,
	}
	// html/template's filters read a whole value and write a few bytes.
	htmlOnly := []string{
		`{{range 1000000000}}<p style="color: {{$.css}}"></p>{{end}}`,
		`{{range 1000000000}}<a href="{{$.jsurl}}"></a>{{end}}`,
	}
	var sources []render.Source
	for _, src := range both {
		sources = append(sources, render.Source{Text: src}, render.Source{HTML: src})
	}
	for _, src := range htmlOnly {
		sources = append(sources, render.Source{HTML: src})
	}
	for _, s := range sources {
		_, err := mustParse(t, s, lim).Execute(vars)
		if !errors.Is(err, render.ErrWorkLimit) {
			t.Errorf("%.70q: Execute error %v, want ErrWorkLimit", s.Text+s.HTML, err)
		}
	}

	// 10^9 iterations under the default limits end with an error, after
	// about a million.
	for _, s := range []render.Source{{Text: `{{range 1000000000}}{{end}}`}, {HTML: `{{range 1000000000}}{{end}}`}} {
		if _, err := mustParse(t, s, render.Limits{}).Execute(nil); !errors.Is(err, render.ErrWorkLimit) {
			t.Errorf("%q: Execute error %v, want ErrWorkLimit", s.Text+s.HTML, err)
		}
	}

	// The default budget fits a template printing MaxOutputBytes of data.
	huge := strings.Repeat("a", render.DefaultMaxOutputBytes-10)
	tm := mustParse(t, render.Source{Text: "{{.v}}", HTML: "<p>{{.v}}</p>"}, render.Limits{})
	if msg, err := tm.Execute(map[string]string{"v": huge}); err != nil || len(msg.HTML) != len(huge)+7 {
		t.Fatalf("large legitimate output: %v", err)
	}

	small := mustParse(t, render.Source{Text: "{{range 10}}{{end}}"}, render.Limits{MaxWork: 64 * 11})
	if _, err := small.Execute(nil); err != nil {
		t.Fatalf("10 iterations in 11 steps: %v", err)
	}
	small = mustParse(t, render.Source{Text: "{{range 11}}{{end}}"}, render.Limits{MaxWork: 64 * 11})
	if _, err := small.Execute(nil); !errors.Is(err, render.ErrWorkLimit) {
		t.Fatalf("11 iterations in 11 steps: %v", err)
	}
}

// Execution errors of every kind are RenderErrors, never panics.
func TestBadCallsAreErrors(t *testing.T) {
	for _, src := range []string{
		`{{index .x 5}}`,
		`{{index .x "k"}}`,
		`{{call .x}}`,
		`{{slice .x 3 1}}`,
		`{{len 3}}`,
		`{{printf}}`,
		`{{.x.y}}`,
		`{{$.x.y}}`,
		`{{.x 1}}`,
		`{{range .x}}{{end}}`,
		`{{eq .x 1}}`,
		`{{lt .x}}`,
		`{{not}}`,
		`{{template "t" 1}}{{define "t"}}{{.a}}{{end}}`,
		`{{range $k, $v := 3}}{{end}}`,
		`{{with $x := 1}}{{$x.y}}{{end}}`,
		`{{1 | .x}}`,
		`{{(.x).y}}`,
	} {
		for _, s := range []render.Source{{Text: src}, {HTML: src}} {
			tm, err := render.Parse(s, render.Limits{})
			if err != nil {
				continue // a parse-time refusal is as good
			}
			var re *render.RenderError
			if _, err := tm.Execute(map[string]string{"x": "ab"}); !errors.As(err, &re) || re.Variable != "" {
				t.Errorf("%+v: Execute error %v, want a RenderError without variable", s, err)
			}
		}
	}
}

func TestConcurrentExecute(t *testing.T) {
	tm := mustParse(t, render.Source{
		Subject: "Hi {{.name}}",
		Text:    "{{range $i := 3}}{{$.name}}{{end}}",
		HTML:    `<a href="/u?id={{.name}}">{{.name}}</a>`,
	}, render.Limits{})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Go(func() {
			for i := range 200 {
				name := fmt.Sprintf("n%d-%d", g, i)
				if i%7 == 0 { // failures must not disturb later renderings
					if _, err := tm.Execute(map[string]string{}); err == nil {
						errs <- errors.New("missing name rendered")
						return
					}
					continue
				}
				msg, err := tm.Execute(map[string]string{"name": name})
				want := render.Message{Subject: "Hi " + name, Text: name + name + name, HTML: `<a href="/u?id=` + name + `">` + name + `</a>`}
				if err != nil || *msg != want {
					errs <- fmt.Errorf("got %+v, %w; want %+v", msg, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
