// Package render renders a bulk campaign's one stored template (subject,
// text body, HTML body) once per recipient, with that recipient's variables.
//
// Contract:
//   - Syntax is Go's text/template for the subject and the text body and
//     html/template for the HTML body, so every value printed into HTML is
//     escaped for its context (element, attribute, URL, script, style).
//     Only the builtin template functions exist; none does I/O.
//   - A recipient's variables are a map[string]string. The caller sets the
//     reserved variable "email" (EmailVar) to the recipient's address,
//     replacing any recipient-supplied value of that name.
//   - Evaluating a reference to a variable the recipient lacks ({{.name}},
//     {{$.name}}, or {{index . "name"}} with a literal key, the form for
//     names that are not identifiers) fails that recipient's rendering with a
//     *RenderError naming the part and the variable. A reference in a branch
//     that is not taken is not evaluated and cannot fail. Only
//     {{index . $key}} with a computed key yields "" for a missing key, as in
//     text/template.
//   - The rendered subject is one line (no CR or LF) of at most 998 octets
//     (RFC 5322's line limit); anything else is a *RenderError.
//   - Execute never panics and its cost is bounded by Limits whatever the
//     template does; see Limits for the cost model.
//   - A Template is immutable after Parse and safe for concurrent Execute.
//     Cache keeps parsed Templates per campaign so that a worker parses a
//     campaign's template once, however many recipients it renders.
//
// Boundedness: text/template has no cancellation and its loops ({{range}}
// over an integer, template calls) and string builtins (print, printf, ...)
// can make work and memory grow without output, e.g. a loop doubling a
// string, so a bound on output bytes alone does not bound a render. Parse
// therefore instruments the parse trees: every loop iteration and template
// call writes an empty text node, and every value flowing into a function,
// a pipeline stage or the output passes through a metering function. Both
// charge a per-execution budget (Limits.MaxWork) and the first charge over
// it aborts the execution. The metering function is internal: a template
// naming it does not parse. Recursive template calls are refused at Parse.
package render
