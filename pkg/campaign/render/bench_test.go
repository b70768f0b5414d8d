package render_test

import (
	"bytes"
	htemplate "html/template"
	"strings"
	"testing"
	ttemplate "text/template"

	"github.com/postflow/postflow/pkg/campaign/render"
)

// benchSource is a typical campaign: a 2 KiB HTML body and a text body
// using 5 variables.
func benchSource() render.Source {
	para := "<p style=\"margin:0 0 12px;font-family:Arial,sans-serif;font-size:14px;line-height:20px;color:#333\">" +
		"Our spring collection has arrived, with new arrivals in every category and free shipping over $50.</p>\n"
	html := `<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{.company}}</title></head>` +
		`<body><table width="100%" cellpadding="0" cellspacing="0"><tr><td>` +
		`<h1 style="font-family:Arial,sans-serif">Hello {{.first_name}},</h1>` +
		strings.Repeat(para, 8) +
		`<p><a href="{{.offer_url}}" style="color:#0a66c2">See your offer, {{.first_name}}</a></p>` +
		`{{if .offer_url}}<p>Offer link for <b>{{.email}}</b> only.</p>{{end}}` +
		`<p style="font-size:11px;color:#999">Sent to {{.email}} by {{.company}}. ` +
		`<a href="{{.unsubscribe_url}}">Unsubscribe</a></p></td></tr></table></body></html>`
	text := "Hello {{.first_name}},\n\n" +
		strings.Repeat("Our spring collection has arrived, with new arrivals in every category.\n", 8) +
		"\n{{if .offer_url}}See your offer: {{.offer_url}}\n{{end}}" +
		"\nSent to {{.email}} by {{.company}}. Unsubscribe: {{.unsubscribe_url}}\n"
	return render.Source{Subject: "{{.first_name}}, your {{.company}} offer", Text: text, HTML: html}
}

var benchVars = map[string]string{
	"email":           "ann.smith@example.com",
	"first_name":      "Ann",
	"company":         "Acme & Sons",
	"offer_url":       "https://shop.example.com/offer?c=spring&u=12345",
	"unsubscribe_url": "https://shop.example.com/u/abcdef0123456789",
}

func BenchmarkExecute(b *testing.B) {
	src := benchSource()
	if n := len(src.HTML); n < 2048 || n > 2600 {
		b.Fatalf("html source is %d bytes, want about 2 KiB", n)
	}
	tm := mustParse(b, src, render.Limits{})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tm.Execute(benchVars); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExecuteParallel(b *testing.B) {
	tm := mustParse(b, benchSource(), render.Limits{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tm.Execute(benchVars); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkExecuteUninstrumented renders the same source with plain
// text/template and html/template, for the cost of instrumentation.
func BenchmarkExecuteUninstrumented(b *testing.B) {
	src := benchSource()
	subject := ttemplate.Must(ttemplate.New("s").Option("missingkey=error").Parse(src.Subject))
	text := ttemplate.Must(ttemplate.New("t").Option("missingkey=error").Parse(src.Text))
	html := htemplate.Must(htemplate.New("h").Option("missingkey=error").Parse(src.HTML))
	b.ReportAllocs()
	for b.Loop() {
		var s, t, h bytes.Buffer
		if err := subject.Execute(&s, benchVars); err != nil {
			b.Fatal(err)
		}
		if err := text.Execute(&t, benchVars); err != nil {
			b.Fatal(err)
		}
		if err := html.Execute(&h, benchVars); err != nil {
			b.Fatal(err)
		}
		_, _, _ = s.String(), t.String(), h.String()
	}
}

func BenchmarkParse(b *testing.B) {
	src := benchSource()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := render.Parse(src, render.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
