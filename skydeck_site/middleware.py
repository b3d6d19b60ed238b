from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.shortcuts import resolve_url


class LoginRequiredMiddleware(auth_middleware.LoginRequiredMiddleware):
    """Django's login-required default, plus two cases it cannot know about.

    An htmx request from an expired session gets ``HX-Redirect`` so the whole
    browser goes to the login page, instead of a login form being swapped into
    a table cell. The REST API answers for itself (401 JSON), so it is exempt
    here and authenticates every request with a token or the session.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)

    def handle_no_permission(self, request, view_func):
        if getattr(request, "htmx", False):
            login_url = resolve_url(self.get_login_url(view_func))
            target = request.htmx.current_url_abs_path or request.get_full_path()
            response = HttpResponse(status=204)
            response["HX-Redirect"] = redirect_to_login(target, login_url).url
            return response
        return super().handle_no_permission(request, view_func)
