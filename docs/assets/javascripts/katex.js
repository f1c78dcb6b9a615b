// Renders the math that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \],
// and the $ $ of the rendered notebooks, with the vendored KaTeX (no network needed).
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
