// Show exact times in the viewer's time zone (the page works without this: UTC).
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var when = new Date(el.getAttribute("datetime"));
  if (isNaN(when)) return;
  var text = when.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "long"});
  if (el.classList.contains("exact")) { el.textContent = text; } else { el.title = text; }
});
