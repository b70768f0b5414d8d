package render

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// EmailVar is the reserved variable holding the recipient's address. The
// caller of Execute sets it, over any recipient-supplied value of that name.
const EmailVar = "email"

// Field names used in ParseError and RenderError.
const (
	FieldSubject = "subject"
	FieldText    = "text"
	FieldHTML    = "html"
)

// MaxSubjectOctets is RFC 5322's limit on a header line, which the rendered
// subject must fit in before any encoding.
const MaxSubjectOctets = 998

// Defaults for zero Limits fields.
const (
	DefaultMaxTemplateBytes = 1 << 20
	DefaultMaxOutputBytes   = 10 << 20
	// DefaultMaxWork is the floor of the default MaxWork, which is the
	// larger of this and 4*MaxOutputBytes so that a template printing up
	// to MaxOutputBytes of variables ({{.name}}) fits.
	DefaultMaxWork = 32 << 20
)

var (
	// ErrTemplateTooLarge means a source is over Limits.MaxTemplateBytes.
	ErrTemplateTooLarge = errors.New("template is over the size limit")
	// ErrNoBody means both the text and the HTML source are empty.
	ErrNoBody = errors.New("a text or an html template is required")
	// ErrOutputLimit means a rendered part would be over
	// Limits.MaxOutputBytes.
	ErrOutputLimit = errors.New("rendered output is over the size limit")
	// ErrWorkLimit means a rendering exhausted Limits.MaxWork.
	ErrWorkLimit = errors.New("rendering exceeded its work limit")
	// ErrSubjectLine means the rendered subject contains CR or LF.
	ErrSubjectLine = errors.New("rendered subject contains a line break")
	// ErrSubjectTooLong means the rendered subject is over
	// MaxSubjectOctets.
	ErrSubjectTooLong = fmt.Errorf("rendered subject is over %d octets", MaxSubjectOctets)
)

// Source is what a campaign stores.
type Source struct {
	// Subject is a text/template. The rendered subject must be one line
	// (no CR or LF) of at most MaxSubjectOctets octets. It may be empty.
	Subject string
	// Text is a text/template; it may be empty if HTML is set.
	Text string
	// HTML is an html/template (contextual escaping); it may be empty if
	// Text is set.
	HTML string
}

// Limits bound parsing and rendering. A zero or negative field takes its
// default.
//
// Cost model of MaxWork: each part's execution starts with MaxWork units.
// Every loop iteration, template call and write, and every value passed
// into a function, a pipeline stage or the output, costs 64 units plus its
// size in bytes; print, printf and println are charged an upper estimate of
// their result before they run. A legitimate template costs a small
// multiple of its output size. Whatever a template does, the strings it
// builds are bounded by the budget, and at the default limit a part stops
// within about 0.2 s of one server core (the slowest adversarial templates
// in the tests; the time scales with MaxWork).
type Limits struct {
	// MaxTemplateBytes bounds each of Subject, Text and HTML; default 1 MiB.
	MaxTemplateBytes int
	// MaxOutputBytes bounds each rendered part; default 10 MiB. The subject
	// is further bounded by MaxSubjectOctets.
	MaxOutputBytes int
	// MaxWork bounds each part's execution in the units above; default the
	// larger of DefaultMaxWork and 4*MaxOutputBytes.
	MaxWork int
}

func (l Limits) withDefaults() Limits {
	if l.MaxTemplateBytes <= 0 {
		l.MaxTemplateBytes = DefaultMaxTemplateBytes
	}
	if l.MaxOutputBytes <= 0 {
		l.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if l.MaxWork <= 0 {
		l.MaxWork = max(DefaultMaxWork, 4*l.MaxOutputBytes)
	}
	return l
}

// ParseError is Parse's error: the source named by Field (FieldSubject,
// FieldText or FieldHTML) does not compile. Err carries the template
// package's message, with line numbers relative to that source.
type ParseError struct {
	Field string
	Err   error
}

func (e *ParseError) Error() string {
	return "render: invalid " + e.Field + " template: " + e.Err.Error()
}

func (e *ParseError) Unwrap() error { return e.Err }

// RenderError is Execute's error: the part named by Field could not be
// rendered for this recipient. Variable names the missing variable when
// that is the cause and is "" otherwise.
type RenderError struct {
	Field    string
	Variable string
	Err      error
}

func (e *RenderError) Error() string {
	if e.Variable != "" {
		return fmt.Sprintf("render: %s: missing variable %q: %v", e.Field, e.Variable, e.Err)
	}
	return "render: " + e.Field + ": " + e.Err.Error()
}

func (e *RenderError) Unwrap() error { return e.Err }

// Template is a campaign's parsed templates; safe for concurrent Execute.
type Template struct {
	subject, text, html *part // nil when the source is empty
	vars                []string
}

// Message is one recipient's rendered parts. A part whose source is empty is
// "".
type Message struct {
	Subject, Text, HTML string
}

// Parse compiles src. Its errors are *ParseError naming the offending field.
func Parse(src Source, lim Limits) (*Template, error) {
	lim = lim.withDefaults()
	if src.Text == "" && src.HTML == "" {
		return nil, &ParseError{Field: FieldText, Err: ErrNoBody}
	}
	t := &Template{}
	var err error
	if t.subject, err = newPart(FieldSubject, src.Subject, lim, min(lim.MaxOutputBytes, MaxSubjectOctets)); err != nil {
		return nil, err
	}
	if t.text, err = newPart(FieldText, src.Text, lim, lim.MaxOutputBytes); err != nil {
		return nil, err
	}
	if t.html, err = newPart(FieldHTML, src.HTML, lim, lim.MaxOutputBytes); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, p := range []*part{t.subject, t.text, t.html} {
		if p != nil {
			collectVars(p.trees, seen)
		}
	}
	t.vars = sortedKeys(seen)
	return t, nil
}

// Vars returns the variables the templates reference, sorted and without
// duplicates, so that the API can check that recipient data (a CSV header)
// supplies them all; it includes EmailVar when referenced.
//
// The rule: a reference counts when it reads the data map itself, which is
// dot outside any {{with}} or {{range}} body ({{.name}}, {{if .name}},
// {{with .name}}, {{index . "name"}}, {{template "t" .name}}), or $ anywhere
// ({{$.name}}). Inside a {{with}} or {{range}} body dot is the value being
// iterated or tested, a string or an integer without fields, so references
// there are not variables. A {{define}}d template is read as if called with
// the data map, the only value with fields. References through other
// variables ({{$d := .}}{{$d.name}}) are not seen; Execute still fails on
// them if the variable is missing.
func (t *Template) Vars() []string {
	return append([]string(nil), t.vars...)
}

// Execute renders the parts for one recipient. vars holds the recipient's
// variables; the caller sets vars[EmailVar] to the recipient's address.
// Extra variables are ignored. Errors are *RenderError; Execute never
// panics.
func (t *Template) Execute(vars map[string]string) (*Message, error) {
	msg := &Message{}
	var err error
	if t.subject != nil {
		if msg.Subject, err = render(t.subject, vars); err != nil {
			return nil, err
		}
		if strings.ContainsAny(msg.Subject, "\r\n") {
			return nil, &RenderError{Field: FieldSubject, Err: ErrSubjectLine}
		}
	}
	if t.text != nil {
		if msg.Text, err = render(t.text, vars); err != nil {
			return nil, err
		}
	}
	if t.html != nil {
		if msg.HTML, err = render(t.html, vars); err != nil {
			return nil, err
		}
	}
	return msg, nil
}

func render(p *part, vars map[string]string) (string, error) {
	out, err := p.render(vars)
	if err == nil {
		return out, nil
	}
	// A limit's position in the template says little (the work limit is
	// usually hit inside instrumentation) and would name internals.
	switch {
	case p.field == FieldSubject && errors.Is(err, ErrOutputLimit):
		err = ErrSubjectTooLong
	case errors.Is(err, ErrOutputLimit):
		err = ErrOutputLimit
	case errors.Is(err, ErrWorkLimit):
		err = ErrWorkLimit
	}
	return "", &RenderError{Field: p.field, Variable: missingVariable(err), Err: cleanError(err)}
}

// missingVariable names the variable whose absence caused err, or "".
// text/template reports a missing map key only in its message, as
// `map has no entry for key "name"`; TestMissingVariable pins that wording.
func missingVariable(err error) string {
	const marker = "map has no entry for key "
	msg := err.Error()
	i := strings.LastIndex(msg, marker)
	if i < 0 {
		return ""
	}
	name, uerr := strconv.Unquote(msg[i+len(marker):])
	if uerr != nil {
		return ""
	}
	return name
}
